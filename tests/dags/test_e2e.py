"""End to end through the real DAG files with ``dag.test()`` on small synthetic data.

extract → validate → sample → train → register → promote → deploy → refresh → precompute →
API answer; then a champion moved by hand in MLflow (and a CLI rollback) is what the deploy
DAG deploys next.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

START = date(2026, 10, 1)
DAYS = 7
SPAN = {
    "interval_start": "2026-10-01T00:00:00+00:00",
    "interval_end": (datetime(2026, 10, 1) + timedelta(days=DAYS)).isoformat() + "+00:00",
}


@pytest.fixture(scope="module")
def chain_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedded-defaults home shared by the chain tests (they build on each other)."""
    home = tmp_path_factory.mktemp("e2e_home")
    saved = {k: os.environ.get(k) for k in ("RECSYS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["RECSYS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from tasks.core.settings import load_settings
    from tasks.data.sources.frames import write_business_frames
    from tasks.data.sources.generate import GeneratorConfig, generate_frames

    frames = generate_frames(
        GeneratorConfig(
            n_users=400, n_illusts=1500, n_artists=120, days=DAYS, start_date=START, seed=3
        )
    )
    write_business_frames(frames, load_settings().replica_url)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def chain(chain_home: Path) -> dict:
    """Run the four DAGs in their asset order once; tests read the outcomes."""
    from tests.doubles.dagrun import run_dag

    outcomes = {"extract": run_dag("recsys_extract_validate", conf=SPAN)}
    assert outcomes["extract"].ok, outcomes["extract"].task_states
    outcomes["train"] = run_dag("recsys_train", conf=SPAN | {"epochs": 10})
    assert outcomes["train"].ok, outcomes["train"].task_states
    outcomes["deploy"] = run_dag("recsys_deploy")
    assert outcomes["deploy"].ok, outcomes["deploy"].task_states
    outcomes["precompute"] = run_dag("recsys_precompute")
    assert outcomes["precompute"].ok, outcomes["precompute"].task_states
    return outcomes


def _count(url: str, table: str) -> int:
    import sqlalchemy as sa

    from tasks.core.db import get_engine

    with get_engine(url).connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def test_extraction_mirrors_the_replica(chain: dict) -> None:
    from tasks.core.settings import load_settings

    settings = load_settings()
    assert chain["extract"].task_states == {
        "wait_for_replica": "success",
        "extract": "success",
        "validate": "success",
        "publish_validated": "success",
    }
    replica_interactions = _count(settings.replica_url, "interactions")
    assert replica_interactions > 1000
    assert _count(settings.recsys_db_url, "mirror_interactions") == replica_interactions
    assert _count(settings.recsys_db_url, "mirror_illusts") == _count(
        settings.replica_url, "illusts"
    )
    assert _count(settings.recsys_db_url, "quarantine") == 0


def test_training_registers_and_promotes_a_champion(chain: dict) -> None:
    from model_registry.registry import resolve_alias
    from tasks.core.settings import load_settings

    train = chain["train"]
    version = train.xcoms["register"]
    assert isinstance(version, int) and version >= 1
    assert train.xcoms["promotion_gate"]["promoted"] is True, train.xcoms["promotion_gate"]
    assert train.task_states["publish_champion"] == "success"
    champion = resolve_alias(load_settings(), "champion")
    assert champion is not None and champion.version == version
    assert _count(load_settings().recsys_db_url, "samples") > 0


def test_deploy_refresh_and_api_answer(chain: dict) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tasks.core.settings import load_settings

    settings = load_settings()
    version = chain["train"].xcoms["register"]
    deployed = chain["deploy"].xcoms["deploy"]
    assert deployed["version"] == version
    assert (
        settings.serving_base_path / settings.model_name / str(version) / "saved_model.pb"
    ).exists()
    refreshed = chain["deploy"].xcoms["refresh_vectors"]
    assert refreshed["collection"].startswith(f"items_v{version}_")
    assert refreshed["n_items"] == _count(settings.recsys_db_url, "mirror_illusts")
    with TestClient(create_app(settings)) as client:
        assert client.get("/version").json()["model_version"] == version
        answer = client.get("/recommend/1", params={"k": 5})
        assert answer.status_code == 200
        items = answer.json()["items"]
        assert len(items) == 5 and len({i["illust_id"] for i in items}) == 5
        assert client.get("/recommend/abc").status_code == 422


def test_deploy_again_is_a_no_op(chain: dict) -> None:
    from tests.doubles.dagrun import run_dag

    again = run_dag("recsys_deploy")
    assert again.ok
    assert again.xcoms["deploy"]["skipped"] is True
    assert again.task_states["refresh_vectors"] == "skipped"


def test_champion_moved_by_hand_is_deployed_then_rolled_back(chain: dict) -> None:
    """A person moves `champion` in MLflow; the next deploy run serves that version."""
    import mlflow

    from model_registry.cli import main as registry_cli
    from model_registry.registry import register_challenger
    from tasks.core.settings import load_settings
    from tasks.model.training.stage import TrainParams, train_two_tower
    from tests.doubles.dagrun import run_dag

    settings = load_settings()
    first = chain["train"].xcoms["register"]
    other = train_two_tower(
        settings,
        SPAN["interval_start"],
        SPAN["interval_end"],
        params=TrainParams(loss="inbatch_softmax", epochs=1, seed=7),
    )
    assert other.run_id != chain["train"].xcoms["train"]["run_id"]
    second = register_challenger(settings, other.run_id)
    assert second == first + 1
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    client.set_registered_model_alias(settings.registered_model_name, "champion", str(second))

    moved = run_dag("recsys_deploy")
    assert moved.ok, moved.task_states
    assert moved.xcoms["deploy"]["version"] == second
    assert moved.xcoms["refresh_vectors"]["collection"].startswith(f"items_v{second}_")

    assert registry_cli(["rollback"]) == 0
    rolled = run_dag("recsys_deploy")
    assert rolled.ok, rolled.task_states
    assert rolled.xcoms["deploy"]["version"] == first


def test_train_lineage_links_airflow_and_mlflow_both_ways(chain: dict) -> None:
    """Issue 13: the MLflow run is named after the DAG run and tagged with the dag/run/task/
    try and a link to the task instance; XCom carries the MLflow run link; the registered
    version carries the MLflow run and the registering task."""
    from urllib.parse import quote

    import mlflow

    from model_registry.registry import get_version
    from tasks.core.settings import load_settings

    settings = load_settings()
    train = chain["train"]
    trained = train.xcoms["train"]
    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(trained["run_id"])
    assert trained["run_url"] == (
        f"{settings.mlflow_ui_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    assert chain["train"].xcoms["promotion_gate"]["run_url"] == trained["run_url"]
    assert run.info.run_name == f"two_tower 2026-10-01..2026-10-08 {train.run_id}"
    tags = run.data.tags
    assert (tags["airflow.dag_id"], tags["airflow.run_id"], tags["airflow.task_id"]) == (
        "recsys_train",
        train.run_id,
        "train",
    )
    assert int(tags["airflow.try_number"]) >= 1
    assert (
        tags["airflow.task_instance_url"]
        .split("?")[0]
        .endswith(f"/dags/recsys_train/runs/{quote(train.run_id)}/tasks/train")
    )
    assert tags["recsys.git_commit"]
    version = get_version(settings, train.xcoms["register"])
    assert version.tags["mlflow_run_id"] == trained["run_id"]
    assert version.tags["airflow.task_id"] == "register"
    assert version.tags["gate_decision"] == "promoted"
