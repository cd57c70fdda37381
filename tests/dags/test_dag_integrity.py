"""Every DAG imports cleanly and carries what operators rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"recsys_extract_validate", "recsys_train", "recsys_deploy", "recsys_precompute"}
HEAVY = ("tensorflow", "mlflow", "pymilvus", "great_expectations")


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}


def test_every_dag_is_present(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert set(dagbag.dag_ids) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_metadata(dagbag, dag_id: str) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.get_dag(dag_id)
    assert "recsys4pix" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200, (
        "doc_md must say what the DAG does and how to trigger it"
    )
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    for task in dag.tasks:
        assert task.on_failure_callback, f"{dag_id}.{task.task_id} has no failure callback"
        assert task.retries in (0, 1, 2), f"{dag_id}.{task.task_id}: retries {task.retries}"


def test_io_tasks_retry_and_compute_tasks_do_not(dagbag) -> None:  # type: ignore[no-untyped-def]
    extract = dagbag.get_dag("recsys_extract_validate")
    assert extract.get_task("extract").retries == 2
    assert extract.get_task("extract").retry_exponential_backoff
    assert extract.get_task("validate").retries == 0
    train = dagbag.get_dag("recsys_train").get_task("train")
    # one quick retry for a lost worker (the stage reuses a finished run), not a slow backoff
    assert (train.retries, train.retry_delay.total_seconds()) == (1, 10)
    assert not train.retry_exponential_backoff
    assert dagbag.get_dag("recsys_train").get_task("promotion_gate").retries == 0


def test_ranker_trains_on_the_two_towers_output_and_gates_after_its_decision(dagbag) -> None:  # type: ignore[no-untyped-def]
    """train_ranker takes the samples and the two-tower's result (its export is the ANN
    channel of the ranker's candidate sets); ranker_gate waits for the two-tower's gate."""
    dag = dagbag.get_dag("recsys_train")
    train_ranker = dag.get_task("train_ranker")
    assert train_ranker.upstream_task_ids == {"build_samples", "train"}
    assert train_ranker.retries == 0
    assert dag.get_task("ranker_gate").upstream_task_ids == {"register_ranker", "promotion_gate"}
    assert dag.get_task("publish_ranker").upstream_task_ids == {"ranker_gate"}


def test_pools_cap_replica_and_milvus(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.get_dag("recsys_extract_validate").get_task("extract").pool == "recsys_replica"
    assert dagbag.get_dag("recsys_deploy").get_task("refresh_vectors").pool == "recsys_milvus"


def test_assets_chain_the_dags(dagbag) -> None:  # type: ignore[no-untyped-def]
    extract = dagbag.get_dag("recsys_extract_validate")
    assert extract.get_task("validate").outlets == []
    validated = extract.get_task("publish_validated")
    assert [a.name for a in validated.outlets] == ["recsys_validated_data"]
    publish = dagbag.get_dag("recsys_train").get_task("publish_champion")
    assert [a.name for a in publish.outlets] == ["recsys_champion_model"]
    refresh = dagbag.get_dag("recsys_deploy").get_task("refresh_vectors")
    assert [a.name for a in refresh.outlets] == ["recsys_serving_vectors"]


def test_manual_trigger_params_validate(dagbag) -> None:  # type: ignore[no-untyped-def]
    """The trigger form rejects bad values instead of starting a run with them."""
    params = dagbag.get_dag("recsys_train").params
    assert params["epochs"] == 10
    assert params.get_param("epochs").resolve(value=3) == 3
    with pytest.raises(Exception, match="minimum|less than"):
        params.get_param("epochs").resolve(value=0)
    with pytest.raises(Exception, match="enum|is not one of"):
        params.get_param("gate_metric").resolve(value="accuracy")
    extract = dagbag.get_dag("recsys_extract_validate").params
    assert extract["interval_start"] is None
    assert extract["max_replica_lag_s"] is None
    assert extract.get_param("max_replica_lag_s").resolve(value=5) == 5
    with pytest.raises(Exception, match="minimum|less than"):
        extract.get_param("max_replica_lag_s").resolve(value=-1)


@pytest.mark.parametrize("path", sorted(DAGS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_heavy_imports_at_top_level(path: Path) -> None:
    """Airflow's top-level-code rule: heavy libraries only inside task bodies."""
    import ast

    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
            )
            for name in names:
                assert not name.startswith(HEAVY), f"{path.name} imports {name} at top level"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_every_param_has_a_title_and_description(dagbag, dag_id: str) -> None:  # type: ignore[no-untyped-def]
    """The trigger form explains every field (issue 13: five Params had no help text)."""
    params = dagbag.get_dag(dag_id).params
    missing = [
        name
        for name in params
        if not (params.get_param(name).description or "").strip()
        or not params.get_param(name).schema.get("title")
    ]
    assert missing == [], f"{dag_id}: Params without title/description: {missing}"


def test_train_form_says_what_an_empty_interval_trains_on(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.get_dag("recsys_train")
    help_text = dag.params.get_param("interval_start").description
    assert "manual trigger" in help_text and "not sampled" in help_text
    assert "recsys_extract_validate` first" in " ".join(dag.doc_md.split())
