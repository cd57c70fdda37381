"""Operational helpers the DAGs call: run intervals and the failure record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from tasks.common import StageResult, check_interval, get_logger
from tasks.db import get_engine, insert_ignore
from tasks.schema import create_recsys_schema, pipeline_failures
from tasks.settings import Settings

log = get_logger("ops")


@dataclass(frozen=True)
class RunInterval(StageResult):
    """The half-open data interval a run works on, and where it came from."""

    start: datetime
    end: datetime
    source: str  # "params" (manual trigger/backfill form) or "data_interval"


def resolve_interval(
    param_start: str | None,
    param_end: str | None,
    data_interval_start: datetime | str | None,
    data_interval_end: datetime | str | None,
) -> RunInterval:
    """Pick the interval: both ``Param`` dates if given, else the run's data interval.

    A manual trigger or backfill form may set ``interval_start``/``interval_end``; one
    without the other is an error rather than a guess.
    """
    if bool(param_start) != bool(param_end):
        raise ValueError(
            f"give both interval_start and interval_end or neither, got {param_start!r}, {param_end!r}"
        )
    if param_start and param_end:
        start, end = check_interval(param_start, param_end)
        return RunInterval(start, end, "params")
    if data_interval_start is None or data_interval_end is None:
        raise ValueError("no data interval on this run and no interval_start/interval_end params")
    start, end = check_interval(data_interval_start, data_interval_end)
    return RunInterval(start, end, "data_interval")


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
    create_recsys_schema(engine)
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
    create_recsys_schema(engine)
    query = sa.select(pipeline_failures).order_by(pipeline_failures.c.id.desc())
    if dag_id:
        query = query.where(pipeline_failures.c.dag_id == dag_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def intervals_from_events(
    param_start: str | None, param_end: str | None, event_extras: list[dict[str, object]]
) -> list[dict[str, str]]:
    """The intervals a training run samples: the Params range, else one per asset event.

    Asset events published by ``recsys_extract_validate`` carry ``interval_start`` and
    ``interval_end`` in their extra. Duplicates collapse; the result is sorted by start.
    """
    if param_start or param_end:
        interval = resolve_interval(param_start, param_end, None, None)
        return [{"start": interval.start.isoformat(), "end": interval.end.isoformat()}]
    seen: set[tuple[datetime, datetime]] = set()
    for extra in event_extras:
        if "interval_start" not in extra or "interval_end" not in extra:
            raise ValueError(f"asset event extra lacks interval_start/interval_end: {extra!r}")
        seen.add(check_interval(str(extra["interval_start"]), str(extra["interval_end"])))
    if not seen:
        raise ValueError(
            "no interval: trigger with interval_start/interval_end params, or let a "
            "recsys_validated_data asset event schedule the run"
        )
    return [{"start": s.isoformat(), "end": e.isoformat()} for s, e in sorted(seen)]


def serving_is_current(settings: Settings, version: int) -> bool:
    """True when the live KV namespace was built by ``version`` from the newest mirror data.

    The deploy DAG runs every few minutes; this lets it skip a refresh that would publish
    exactly what is already live, while new data or a new champion still refreshes.
    """
    from tasks.schema import mirror_interactions
    from tasks.vectors import refresh_tag

    engine = get_engine(settings.recsys_db_url)
    create_recsys_schema(engine)
    with engine.connect() as conn:
        newest = conn.execute(sa.select(sa.func.max(mirror_interactions.c.create_time))).scalar()
    if newest is None:
        return False
    live = live_namespace(settings)
    wanted = refresh_tag(version, newest)
    log.info("live KV namespace %s, a refresh now would publish %s", live, wanted)
    return live == wanted


def live_namespace(settings: Settings) -> str | None:
    """The KV namespace the online API reads now (None before the first vector refresh)."""
    from tasks.kv import open_kv
    from tasks.vectors import current_namespace

    kv = open_kv(settings)
    try:
        return current_namespace(kv)
    finally:
        kv.close()
