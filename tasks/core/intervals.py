"""Run intervals: which half-open data interval a DAG run works on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasks.core.common import StageResult, check_interval, get_logger

log = get_logger("intervals")


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


def validated_intervals(engine: Any) -> list[tuple[datetime, datetime]]:
    """Intervals the recsys DB holds as validated, oldest first.

    An interval counts once ``extract`` staged it (any staging table holds rows keyed by it)
    and ``validate`` left no open quarantine row for it: a failed validation keeps its
    fail-severity rows open until a re-run after the fix resolves them.
    """
    import sqlalchemy as sa

    from tasks.core import schema

    staged: set[tuple[datetime, datetime]] = set()
    with engine.connect() as conn:
        for staging in schema.STAGING_TABLES.values():
            rows = conn.execute(
                sa.select(staging.c.data_interval_start, staging.c.data_interval_end).distinct()
            )
            staged.update((r[0], r[1]) for r in rows)
        q = schema.quarantine
        rows = conn.execute(
            sa.select(q.c.data_interval_start, q.c.data_interval_end)
            .where(q.c.resolved_run_id.is_(None))
            .distinct()
        )
        held = {(r[0], r[1]) for r in rows}
    return sorted(staged - held)


def sampled_intervals(engine: Any) -> set[tuple[datetime, datetime]]:
    """Intervals ``build_samples`` has written rows for (the ``samples`` table's interval)."""
    import sqlalchemy as sa

    from tasks.core import schema

    s = schema.samples
    with engine.connect() as conn:
        rows = conn.execute(sa.select(s.c.interval_start, s.c.interval_end).distinct())
        return {(r[0], r[1]) for r in rows}


def default_training_intervals(
    validated: list[tuple[datetime, datetime]], sampled: set[tuple[datetime, datetime]]
) -> tuple[list[dict[str, str]], str]:
    """What a manual ``recsys_train`` trigger with an empty form trains on, and why.

    The validated intervals not yet sampled; when every validated interval is sampled
    already, the newest one (a retrain on the latest data). Nothing validated is an error
    that says what to run first.
    """
    if not validated:
        raise ValueError(
            "no validated data interval in the recsys DB: run recsys_extract_validate first "
            "(or trigger recsys_train with interval_start/interval_end)"
        )
    todo = [i for i in sorted(validated) if i not in sampled]
    if todo:
        why = f"{len(todo)} validated interval(s) not sampled yet"
    else:
        todo = [max(validated, key=lambda i: (i[1], i[0]))]
        why = "every validated interval is sampled already: retraining on the newest"
    return [{"start": s.isoformat(), "end": e.isoformat()} for s, e in todo], why


def training_intervals(
    recsys_db_url: str,
    param_start: str | None,
    param_end: str | None,
    event_extras: list[dict[str, object]],
) -> list[dict[str, str]]:
    """The intervals one ``recsys_train`` run samples.

    The form's ``interval_start``/``interval_end`` if set, else one per triggering
    ``recsys_validated_data`` asset event, else (a manual trigger with the form's defaults)
    :func:`default_training_intervals` on what the recsys DB holds.
    """
    if param_start or param_end or event_extras:
        chosen = intervals_from_events(param_start, param_end, event_extras)
        log.info(
            "training on %s (%s)",
            chosen,
            "form params" if param_start or param_end else "triggering asset events",
        )
        return chosen
    from tasks.core import schema
    from tasks.core.db import get_engine

    engine = get_engine(recsys_db_url)
    schema.ensure_recsys_schema(engine)
    chosen, why = default_training_intervals(validated_intervals(engine), sampled_intervals(engine))
    log.info("no interval params and no asset events: training on %s (%s)", chosen, why)
    return chosen
