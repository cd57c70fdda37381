"""Run intervals: which half-open data interval a DAG run works on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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
