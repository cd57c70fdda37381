"""DAG callbacks: every task failure is recorded in one place (``pipeline_failures``)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def record_task_failure(context: dict[str, Any]) -> None:
    """``on_failure_callback``: store dag/task/run/try and the exception in the recsys DB."""
    from plugins.connections import settings_from_connections
    from tasks.core.failures import record_failure

    ti = context.get("ti") or context.get("task_instance")
    try:
        record_failure(
            settings_from_connections(),
            dag_id=getattr(ti, "dag_id", "?"),
            task_id=getattr(ti, "task_id", "?"),
            run_id=str(context.get("run_id") or getattr(ti, "run_id", "?")),
            try_number=int(getattr(ti, "try_number", 0) or 0),
            error=repr(context.get("exception")),
            log_url=getattr(ti, "log_url", None),
        )
    except Exception:  # a callback must never mask the task's own failure
        log.exception("could not record the task failure")
