"""What every recsys4pix DAG shares: assets, pools, default args, the settings lookup.

Kept out of ``dags/`` so DAG files stay orchestration only and the DAG processor does not
parse this module as a DAG file.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag

from plugins.callbacks import record_task_failure
from plugins.task_stderr import install_stderr_forwarding
from tasks.core.common import quiet_third_party

# Every task process imports this module (through its DAG file) before a task body imports
# TensorFlow/MLflow/GX: their stderr chatter is turned down here, once; what still reaches
# stderr is logged at its own level, not as the supervisor's ERROR (no-op outside a worker).
quiet_third_party()
install_stderr_forwarding()

# Data-aware scheduling: each DAG publishes one of these, the next one is scheduled on it.
VALIDATED_DATA = Asset(name="recsys_validated_data", uri="recsys://recsys_db/mirror")
CHAMPION_MODEL = Asset(name="recsys_champion_model", uri="recsys://mlflow/champion")
SERVING_VECTORS = Asset(name="recsys_serving_vectors", uri="recsys://serving/vectors")

# Pools cap concurrent use of shared backends (created by scripts/airflow_setup.py).
REPLICA_POOL = "recsys_replica"
MILVUS_POOL = "recsys_milvus"
POOLS: dict[str, tuple[int, str]] = {
    REPLICA_POOL: (2, "concurrent readers of the business MySQL replica"),
    MILVUS_POOL: (2, "concurrent writers to Milvus (collection build + alias swap)"),
}

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "recsys4pix",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": record_task_failure,
}
# Compute-bound tasks (evaluation, gate) do not retry: a rerun would fail alike.
NO_RETRY: dict[str, Any] = {"retries": 0}
# Two-tower training retries once, soon: a worker lost mid-training (SIGKILL, OOM) fails the
# try by heartbeat timeout, and the stage is idempotent per interval (a finished run is
# reused, a registered run keeps its version), so the retry ends with one model version.
WORKER_LOSS_RETRY: dict[str, Any] = {
    "retries": 1,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": False,
}

TAGS = ["recsys4pix"]
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def recsys_dag(
    dag_id: str,
    *,
    schedule: Any,
    stage: str,
    doc_md: str | None,
    params: dict[str, Param] | None = None,
) -> Any:
    """The ``@dag(...)`` header every recsys4pix DAG shares; only what differs is passed in.

    One run at a time (each stage is idempotent per interval but shares backends), no
    catch-up (backfills are explicit), the shared retries/failure callback, and tags
    ``recsys4pix`` + the stage name so the UI can filter by stage.
    """
    return dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=[*TAGS, stage],
        doc_md=doc_md,
        params=params or {},
    )


def interval_params(when_empty: str) -> dict[str, Param]:
    """The ``interval_start``/``interval_end`` pair of a manual-trigger or backfill form."""
    titles = {
        "interval_start": "Interval start (UTC)",
        "interval_end": "Interval end (UTC, exclusive)",
    }
    return {
        name: Param(
            None,
            type=["null", "string"],
            format="date-time",
            title=title,
            description=f"Leave empty to {when_empty}.",
        )
        for name, title in titles.items()
    }


def task_settings() -> Any:
    """Settings for the running task: embedded defaults overlaid with Airflow Connections."""
    from plugins.connections import settings_from_connections

    return settings_from_connections()
