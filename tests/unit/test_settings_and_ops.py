"""Settings precedence, interval resolution and the failure record (no Airflow needed)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tasks.core.failures import list_failures, record_failure
from tasks.core.intervals import intervals_from_events, resolve_interval
from tasks.core.settings import load_settings


def test_embedded_defaults_live_under_home(recsys_home: Path) -> None:
    s = load_settings()
    assert s.replica_url == f"sqlite:///{recsys_home / 'replica.db'}"
    assert s.recsys_db_url == f"sqlite:///{recsys_home / 'recsys.db'}"
    assert s.kv_url == f"file://{recsys_home / 'kv'}"
    assert s.milvus_uri == str(recsys_home / "milvus.db")
    assert s.mlflow_tracking_uri == f"sqlite:///{recsys_home / 'mlflow.db'}"
    assert s.tfserving_url is None


def test_env_vars_override_and_recsys_vars_beat_airflow_conn(
    recsys_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_DB", "mysql://u:p@db:3306/recsys")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", "milvus://vec:19530")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_REPLICA", "mysql://ro@replica:3306/site")
    monkeypatch.setenv("RECSYS_REPLICA_URL", "mysql+mysqldb://other@r2:3306/site")
    s = load_settings()
    assert s.recsys_db_url == "mysql+mysqldb://u:p@db:3306/recsys"
    assert s.milvus_uri == "http://vec:19530"
    assert s.replica_url == "mysql+mysqldb://other@r2:3306/site"


def test_interval_from_params_wins_over_data_interval() -> None:
    got = resolve_interval("2026-10-01T00:00:00+00:00", "2026-10-03T00:00:00+00:00", "x", "y")
    assert (got.start, got.end, got.source) == (
        datetime(2026, 10, 1),
        datetime(2026, 10, 3),
        "params",
    )


def test_interval_from_aware_data_interval_is_naive_utc() -> None:
    got = resolve_interval(None, None, "2026-10-01T02:00:00+02:00", "2026-10-02T00:00:00+00:00")
    assert (got.start, got.end, got.source) == (
        datetime(2026, 10, 1),
        datetime(2026, 10, 2),
        "data_interval",
    )


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-10-01", None, "both"),
        ("2026-10-02", "2026-10-01", "start < end"),
        ("not-a-date", "2026-10-01", "Invalid isoformat|not-a-date"),
    ],
)
def test_bad_intervals_are_rejected(start: str, end: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_interval(start, end, None, None)


def test_intervals_from_asset_events_are_deduplicated_and_sorted() -> None:
    extras = [
        {
            "interval_start": "2026-10-02T00:00:00+00:00",
            "interval_end": "2026-10-03T00:00:00+00:00",
        },
        {
            "interval_start": "2026-10-01T00:00:00+00:00",
            "interval_end": "2026-10-02T00:00:00+00:00",
        },
        {
            "interval_start": "2026-10-02T00:00:00+00:00",
            "interval_end": "2026-10-03T00:00:00+00:00",
        },
    ]
    assert intervals_from_events(None, None, extras) == [
        {"start": "2026-10-01T00:00:00", "end": "2026-10-02T00:00:00"},
        {"start": "2026-10-02T00:00:00", "end": "2026-10-03T00:00:00"},
    ]
    with pytest.raises(ValueError, match="no interval"):
        intervals_from_events(None, None, [])
    with pytest.raises(ValueError, match="lacks interval_start"):
        intervals_from_events(None, None, [{"version": 3}])


def test_failure_record_is_one_row_per_try(settings) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):  # the callback firing twice for the same try writes one row
        record_failure(settings, dag_id="d", task_id="t", run_id="r", try_number=1, error="boom")
    record_failure(settings, dag_id="d", task_id="t", run_id="r", try_number=2, error="boom again")
    rows = list_failures(settings, "d")
    assert [(r["try_number"], r["error"]) for r in rows] == [(2, "boom again"), (1, "boom")]
