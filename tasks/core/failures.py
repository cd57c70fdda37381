"""The failure record: one row per failed task try, readable without the Airflow UI."""

from __future__ import annotations

import sqlalchemy as sa

from tasks.core.common import get_logger
from tasks.core.db import get_engine, insert_ignore
from tasks.core.schema import ensure_recsys_schema, pipeline_failures
from tasks.core.settings import Settings

log = get_logger("failures")


def record_failure(
    settings: Settings,
    *,
    dag_id: str,
    task_id: str,
    run_id: str,
    try_number: int,
    error: str,
    log_url: str | None = None,
) -> None:
    """Write one row per failed task try to ``pipeline_failures`` (idempotent per try)."""
    engine = get_engine(settings.recsys_db_url)
    ensure_recsys_schema(engine)
    row = {
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "try_number": int(try_number),
        "error": error[:10_000],
        "log_url": log_url,
    }
    with engine.begin() as conn:
        conn.execute(insert_ignore(pipeline_failures, engine.dialect.name), [row])
    log.error(
        "recorded failure of %s.%s (%s, try %s): %s",
        dag_id,
        task_id,
        run_id,
        try_number,
        error[:500],
    )


def list_failures(settings: Settings, dag_id: str | None = None) -> list[dict[str, object]]:
    """Failures recorded so far, newest first."""
    engine = get_engine(settings.recsys_db_url)
    ensure_recsys_schema(engine)
    query = sa.select(pipeline_failures).order_by(pipeline_failures.c.id.desc())
    if dag_id:
        query = query.where(pipeline_failures.c.dag_id == dag_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
