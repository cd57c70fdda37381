"""Airflow side of lineage: the running task instance as a ``tasks.core.lineage.RunLineage``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.core.lineage import RunLineage, git_commit


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def lineage_from_context(context: Mapping[str, Any] | None = None) -> RunLineage:
    """The current task try (dag, run, task, try number, data interval, TI URL, commit).

    ``context`` defaults to ``airflow.sdk.get_current_context()`` (inside a TaskFlow task).
    The data interval is the DAG run's when it has one (asset-triggered and manual runs
    have none; the stage adds the interval it actually trained on as its own tags). The
    link is the task SDK's ``RuntimeTaskInstance.log_url``: the task instance's page (with
    its log) under ``[api] base_url``.
    """
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    try:
        ti_url = str(getattr(ti, "log_url", "") or "")
    except Exception:  # no [api] base_url / comms outside a real worker: keep the rest
        ti_url = ""
    return RunLineage(
        dag_id=str(getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "") or ""),
        run_id=str(context.get("run_id") or getattr(ti, "run_id", "") or ""),
        task_id=str(getattr(ti, "task_id", "") or ""),
        try_number=int(getattr(ti, "try_number", 0) or 0),
        interval_start=_iso(
            context.get("data_interval_start") or getattr(dag_run, "data_interval_start", None)
        ),
        interval_end=_iso(
            context.get("data_interval_end") or getattr(dag_run, "data_interval_end", None)
        ),
        ti_url=ti_url,
        git_commit=git_commit(),
    )
