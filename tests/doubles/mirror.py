"""Fixture mirror writer: business frames straight into the recsys DB (a test double)."""

from __future__ import annotations

from typing import Any

from tasks.core.common import get_logger

log = get_logger("fixture_mirror")


def write_mirror_frames(engine: Any, frames: Any) -> dict[str, int]:
    """Load business frames straight into the recsys DB mirror tables (fixture data).

    For tests, benches and demos of the serving side without running extraction; replaces
    what the mirror tables held.
    """
    import sqlalchemy as sa

    from tasks.core.schema import MIRROR_TABLES, ensure_recsys_schema

    ensure_recsys_schema(engine)
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for name, table in MIRROR_TABLES.items():
            frame = getattr(frames, name)
            conn.execute(sa.delete(table))
            rows = frame[[c.name for c in table.columns]].to_dict("records")
            for start in range(0, len(rows), 5000):
                conn.execute(sa.insert(table), rows[start : start + 5000])
            counts[name] = len(rows)
    log.info("wrote fixture mirror tables: %s", counts)
    return counts
