"""What a manual ``recsys_train`` trigger with the form's defaults trains on (issue 13, item 3)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

D = [datetime(2026, 10, day) for day in range(1, 6)]


def _db(tmp_path: Path) -> tuple[str, sa.Engine]:
    from tasks.core import schema
    from tasks.core.db import get_engine

    url = f"sqlite:///{tmp_path / 'recsys.db'}"
    engine = get_engine(url)
    schema.ensure_recsys_schema(engine)
    return url, engine


def _stage(engine: sa.Engine, table: str, start: datetime, end: datetime) -> None:
    from tasks.core import schema

    with engine.begin() as conn:
        conn.execute(
            sa.insert(schema.STAGING_TABLES[table]).values(
                data_interval_start=start, data_interval_end=end, row_seq=1, run_id="r"
            )
        )


def test_empty_form_and_no_events_fails_saying_what_to_run(tmp_path: Path) -> None:
    from tasks.core.intervals import training_intervals

    url, _ = _db(tmp_path)
    with pytest.raises(ValueError, match="run recsys_extract_validate first"):
        training_intervals(url, None, None, [])


def test_empty_form_trains_on_validated_intervals_not_sampled_yet(tmp_path: Path) -> None:
    from tasks.core import schema
    from tasks.core.intervals import training_intervals

    url, engine = _db(tmp_path)
    _stage(engine, "interactions", D[0], D[1])  # validated, sampled below
    _stage(engine, "users", D[1], D[2])  # validated, not sampled (only users staged)
    _stage(engine, "interactions", D[2], D[3])  # failed validation: open quarantine row
    _stage(engine, "interactions", D[3], D[4])  # validated, not sampled
    with engine.begin() as conn:
        conn.execute(
            sa.insert(schema.quarantine).values(
                table_name="interactions", row_key="k", expectation="e", reason="r",
                row_json="{}", run_id="r", data_interval_start=D[2], data_interval_end=D[3],
            )
        )  # fmt: skip
        conn.execute(
            sa.insert(schema.samples).values(
                user_id=1, illust_id=1, label=1, source="positive",
                interval_start=D[0], interval_end=D[1], created_at=D[1],
            )
        )  # fmt: skip
    assert training_intervals(url, None, None, []) == [
        {"start": "2026-10-02T00:00:00", "end": "2026-10-03T00:00:00"},
        {"start": "2026-10-04T00:00:00", "end": "2026-10-05T00:00:00"},
    ]
    # The quarantine row resolved (a re-run after the fix): that interval counts again.
    with engine.begin() as conn:
        conn.execute(sa.update(schema.quarantine).values(resolved_run_id="fixed"))
    assert len(training_intervals(url, None, None, [])) == 3


def test_everything_sampled_retrains_on_the_newest_validated_interval() -> None:
    from tasks.core.intervals import default_training_intervals

    chosen, why = default_training_intervals(
        [(D[0], D[1]), (D[1], D[2])], {(D[0], D[1]), (D[1], D[2])}
    )
    assert chosen == [{"start": "2026-10-02T00:00:00", "end": "2026-10-03T00:00:00"}]
    assert "newest" in why


def test_params_and_events_still_win(tmp_path: Path) -> None:
    from tasks.core.intervals import training_intervals

    url, _ = _db(tmp_path)
    assert training_intervals(
        url, "2026-10-01T00:00:00+00:00", "2026-10-02T00:00:00+00:00", []
    ) == [{"start": "2026-10-01T00:00:00", "end": "2026-10-02T00:00:00"}]
    extra = {"interval_start": "2026-10-03T00:00:00", "interval_end": "2026-10-04T00:00:00"}
    assert training_intervals(url, None, None, [extra]) == [
        {"start": "2026-10-03T00:00:00", "end": "2026-10-04T00:00:00"}
    ]
