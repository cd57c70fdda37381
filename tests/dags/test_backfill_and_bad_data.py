"""Backfill equivalence and bad input through the real extraction DAG (``dag.test()``)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

START = date(2026, 10, 1)
DAYS = 3


def _seed_replica(settings) -> None:  # type: ignore[no-untyped-def]
    from tasks.data.sources.frames import write_business_frames
    from tasks.data.sources.generate import GeneratorConfig, generate_frames

    frames = generate_frames(
        GeneratorConfig(
            n_users=60, n_illusts=150, n_artists=20, days=DAYS, start_date=START, seed=11
        )
    )
    write_business_frames(frames, settings.replica_url)


def _tables(url: str) -> dict[str, list[tuple]]:
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.schema import MIRROR_TABLES

    out = {}
    with get_engine(url).connect() as conn:
        for name, table in MIRROR_TABLES.items():
            key = [c for c in table.primary_key.columns]
            out[name] = [tuple(r) for r in conn.execute(sa.select(table).order_by(*key))]
    return out


def test_daily_runs_equal_one_run_over_the_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N scheduled (backfilled) daily runs give exactly the tables of one run over the range."""
    from tasks.core.settings import load_settings
    from tests.doubles.dagrun import run_dag

    homes = {"daily": tmp_path / "daily", "range": tmp_path / "range"}
    for home in homes.values():
        monkeypatch.setenv("RECSYS_HOME", str(home))
        _seed_replica(load_settings())

    monkeypatch.setenv("RECSYS_HOME", str(homes["daily"]))
    for day in range(DAYS):
        # CronDataIntervalTimetable: the run at logical date D+1 covers [D, D+1).
        logical = datetime(2026, 10, 2) + timedelta(days=day)
        outcome = run_dag("recsys_extract_validate", logical_date=logical.replace(tzinfo=_utc()))
        assert outcome.ok, outcome.task_states
        interval = outcome.xcoms["extract"]["interval"]
        assert interval["source"] == "data_interval"
    daily = _tables(load_settings().recsys_db_url)

    monkeypatch.setenv("RECSYS_HOME", str(homes["range"]))
    span = {
        "interval_start": "2026-10-01T00:00:00+00:00",
        "interval_end": "2026-10-04T00:00:00+00:00",
    }
    outcome = run_dag("recsys_extract_validate", conf=span)
    assert outcome.ok, outcome.task_states
    once = _tables(load_settings().recsys_db_url)

    assert len(once["interactions"]) > 100
    assert daily == once
    # Re-running one day changes nothing (idempotent).
    monkeypatch.setenv("RECSYS_HOME", str(homes["daily"]))
    again = run_dag("recsys_extract_validate", logical_date=datetime(2026, 10, 3, tzinfo=_utc()))
    assert again.ok
    assert _tables(load_settings().recsys_db_url) == daily


def test_bad_rows_fail_the_run_and_are_picked_up_after_the_fix(
    recsys_home: Path,
) -> None:
    """Invalid labels are quarantined, validation fails (no retry), the fix is picked up."""
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.failures import list_failures
    from tasks.core.schema import interactions
    from tasks.core.settings import load_settings
    from tests.doubles.dagrun import run_dag

    settings = load_settings()
    _seed_replica(settings)
    replica = get_engine(settings.replica_url)
    bad_time = datetime(2026, 10, 2, 12, 0, 0)
    with replica.begin() as conn:
        first = conn.execute(sa.select(interactions).limit(1)).mappings().one()
        conn.execute(
            sa.insert(interactions),
            [
                {
                    "user_id": first["user_id"],
                    "illust_id": first["illust_id"],
                    "label": 7,
                    "create_time": bad_time,
                }
            ],
        )
    span = {
        "interval_start": "2026-10-01T00:00:00+00:00",
        "interval_end": "2026-10-04T00:00:00+00:00",
    }

    failed = run_dag("recsys_extract_validate", conf=span)
    assert not failed.ok
    assert failed.task_states["validate"] == "failed"
    with get_engine(settings.recsys_db_url).connect() as conn:
        reasons = conn.execute(sa.text("SELECT table_name, reason FROM quarantine")).all()
        mirrored = conn.execute(sa.text("SELECT COUNT(*) FROM mirror_interactions")).scalar_one()
    assert any(t == "interactions" and "label" in r for t, r in reasons), reasons
    assert mirrored > 0, "good rows must not be lost"
    assert any(
        f["task_id"] == "validate" for f in list_failures(settings, "recsys_extract_validate")
    )

    with replica.begin() as conn:
        conn.execute(sa.update(interactions).where(interactions.c.label == 7).values(label=1))
    fixed = run_dag("recsys_extract_validate", conf=span)
    assert fixed.ok, fixed.task_states
    from tasks.core.schema import mirror_interactions as mi

    with get_engine(settings.recsys_db_url).connect() as conn:
        picked = conn.execute(
            sa.select(mi.c.label).where(
                mi.c.create_time == bad_time, mi.c.user_id == first["user_id"]
            )
        ).all()
        open_quarantine = conn.execute(
            sa.text("SELECT COUNT(*) FROM quarantine WHERE resolved_run_id IS NULL")
        ).scalar_one()
    assert [tuple(r) for r in picked] == [(1,)]
    assert open_quarantine == 0


def _utc():  # type: ignore[no-untyped-def]
    from datetime import UTC

    return UTC


def _asset_events(run_id: str) -> list[dict]:
    """The asset events the run ``run_id`` emitted (Airflow's metadata DB)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == run_id))
        return [dict(e.extra or {}) for e in events]


def test_an_interval_without_interactions_publishes_no_asset_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the data's span is extracted, a quiet day (the empty latest interval a scheduler
    runs after unpausing) skips the publish: no event, so no training run fails on zero
    samples; the span with data published its interval and interaction count."""
    from tasks.core.settings import load_settings
    from tests.doubles.dagrun import run_dag

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    _seed_replica(load_settings())
    span = {
        "interval_start": "2026-10-01T00:00:00+00:00",
        "interval_end": "2026-10-04T00:00:00+00:00",
    }
    busy = run_dag("recsys_extract_validate", conf=span)
    assert busy.ok and busy.task_states["publish_validated"] == "success", busy.task_states
    [extra] = _asset_events(busy.run_id)
    assert extra["interval_start"].startswith("2026-10-01")
    assert extra["interactions"] == busy.xcoms["validate"]["rows_to_mirror"]["interactions"] > 0

    quiet = run_dag("recsys_extract_validate", logical_date=datetime(2030, 1, 2, tzinfo=_utc()))
    assert quiet.ok, quiet.task_states
    assert quiet.task_states["validate"] == "success"
    assert quiet.task_states["publish_validated"] == "skipped"
    assert _asset_events(quiet.run_id) == []


def test_a_caught_up_gap_is_in_the_published_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Day 1 runs, day 2's run never happens (DAG paused), day 3's run catches day 2 up: its
    asset event's interval starts at day 2, so training samples the gap's interactions."""
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.settings import load_settings
    from tests.doubles.dagrun import run_dag

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    settings = load_settings()
    _seed_replica(settings)
    first = run_dag("recsys_extract_validate", logical_date=datetime(2026, 10, 2, tzinfo=_utc()))
    assert first.ok, first.task_states
    [day1] = _asset_events(first.run_id)
    assert (day1["interval_start"], day1["interval_end"]) == (
        "2026-10-01T00:00:00",
        "2026-10-02T00:00:00",
    )
    third = run_dag("recsys_extract_validate", logical_date=datetime(2026, 10, 4, tzinfo=_utc()))
    assert third.ok, third.task_states
    assert third.xcoms["extract"]["extract"]["interactions_from"] == "2026-10-02T00:00:00"
    [caught_up] = _asset_events(third.run_id)
    assert (caught_up["interval_start"], caught_up["interval_end"]) == (
        "2026-10-02T00:00:00",
        "2026-10-04T00:00:00",
    )
    with get_engine(settings.recsys_db_url).connect() as conn:
        gap_and_day3 = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM mirror_interactions "
                "WHERE create_time >= '2026-10-02' AND create_time < '2026-10-04'"
            )
        ).scalar_one()
    assert caught_up["interactions"] == gap_and_day3 > day1["interactions"] > 0
