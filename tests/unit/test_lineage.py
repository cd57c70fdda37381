"""Lineage between Airflow and MLflow: RunLineage tags, run names, the git commit, the
Airflow-context adapter and the MLflow UI links (no Airflow worker needed)."""

from __future__ import annotations

import subprocess
import types
from datetime import datetime
from pathlib import Path

from tasks.core.lineage import RunLineage, git_commit, run_name

LINEAGE = RunLineage(
    dag_id="recsys_train",
    run_id="asset_triggered__2024-02-01T00:00:00+00:00",
    task_id="train",
    try_number=2,
    interval_start="2024-01-01T00:00:00+00:00",
    interval_end="2024-02-01T00:00:00+00:00",
    ti_url="http://af.test/dags/recsys_train/runs/r/tasks/train?try_number=2",
    git_commit="abc123",
)


def test_as_tags_names_every_field_under_airflow_and_recsys_prefixes() -> None:
    assert LINEAGE.as_tags() == {
        "airflow.dag_id": "recsys_train",
        "airflow.run_id": "asset_triggered__2024-02-01T00:00:00+00:00",
        "airflow.task_id": "train",
        "airflow.try_number": "2",
        "airflow.data_interval_start": "2024-01-01T00:00:00+00:00",
        "airflow.data_interval_end": "2024-02-01T00:00:00+00:00",
        "airflow.task_instance_url": "http://af.test/dags/recsys_train/runs/r/tasks/train?try_number=2",
        "recsys.git_commit": "abc123",
    }
    # Unknown parts (a manual run has no data interval) are left out, not written empty.
    bare = RunLineage(dag_id="d", run_id="r", task_id="t", try_number=1)
    assert bare.as_tags() == {
        "airflow.dag_id": "d",
        "airflow.run_id": "r",
        "airflow.task_id": "t",
        "airflow.try_number": "1",
        "recsys.git_commit": "unknown",
    }


def test_run_names_are_readable_and_differ_per_dag_run() -> None:
    start, end = datetime(2024, 1, 1), datetime(2024, 2, 1, 12)
    assert run_name("two_tower", start, end) == "two_tower 2024-01-01..2024-02-01T12:00:00 manual"
    assert (
        run_name("two_tower", start, end, LINEAGE)
        == "two_tower 2024-01-01..2024-02-01T12:00:00 asset_triggered__2024-02-01T00:00:00+00:00"
    )
    other = RunLineage(dag_id="recsys_train", run_id="manual__x", task_id="train", try_number=1)
    assert run_name("two_tower", start, end, other) != run_name("two_tower", start, end, LINEAGE)


def test_git_commit_env_then_repo_then_unknown(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECSYS_GIT_COMMIT", "feedbeef\n")
    assert git_commit() == "feedbeef"
    monkeypatch.delenv("RECSYS_GIT_COMMIT")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert git_commit() == (head or "unknown")
    assert git_commit(tmp_path) == "unknown"  # not a repository


def test_lineage_from_context_reads_the_task_instance(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from plugins.lineage import lineage_from_context

    monkeypatch.setenv("RECSYS_GIT_COMMIT", "c0ffee")
    ti = types.SimpleNamespace(
        dag_id="recsys_train",
        task_id="register",
        run_id="manual__1",
        try_number=3,
        log_url="http://af.test/dags/recsys_train/runs/manual__1/tasks/register?try_number=3",
    )
    context = {
        "ti": ti,
        "run_id": "manual__1",
        "dag_run": types.SimpleNamespace(data_interval_start=None, data_interval_end=None),
    }
    assert lineage_from_context(context) == RunLineage(
        dag_id="recsys_train",
        run_id="manual__1",
        task_id="register",
        try_number=3,
        interval_start=None,
        interval_end=None,
        ti_url="http://af.test/dags/recsys_train/runs/manual__1/tasks/register?try_number=3",
        git_commit="c0ffee",
    )


def test_runtime_task_instance_log_url_is_the_task_instance_page(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What Airflow 3's task SDK gives as ``ti.log_url``: the TI page under [api] base_url."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080")
    ti = types.SimpleNamespace(
        run_id="manual__2024-02-01T00:00:00+00:00",
        dag_id="recsys_train",
        task_id="train",
        map_index=-1,
        try_number=1,
    )
    assert RuntimeTaskInstance.log_url.fget(ti) == (  # type: ignore[attr-defined]
        "http://127.0.0.1:8080/dags/recsys_train/runs/"
        "manual__2024-02-01T00%3A00%3A00%2B00%3A00/tasks/train?try_number=1"
    )


def test_mlflow_ui_url_setting_and_run_link(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tasks.core.settings import load_settings
    from tasks.model.training.tracking import run_url

    monkeypatch.delenv("RECSYS_MLFLOW_UI_URL", raising=False)
    assert load_settings(tmp_path).mlflow_ui_url == "http://127.0.0.1:5000"
    monkeypatch.setenv("RECSYS_MLFLOW_UI_URL", "https://mlflow.example.org/")
    settings = load_settings(tmp_path)
    assert settings.mlflow_ui_url == "https://mlflow.example.org"
    assert run_url(settings, "3", "abc") == "https://mlflow.example.org/#/experiments/3/runs/abc"
