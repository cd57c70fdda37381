"""The serving namespace: which KV namespace readers use, and whether it is current."""

from __future__ import annotations

import sqlalchemy as sa

from tasks.core.common import get_logger
from tasks.core.db import get_engine
from tasks.core.schema import create_recsys_schema
from tasks.core.settings import Settings

log = get_logger("namespace")


def serving_is_current(settings: Settings, version: int) -> bool:
    """True when the live KV namespace was built by ``version`` from the newest mirror data.

    The deploy DAG runs every few minutes; this lets it skip a refresh that would publish
    exactly what is already live, while new data or a new champion still refreshes.
    """
    from tasks.core.schema import mirror_interactions
    from tasks.serving.vectors import refresh_tag

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
    from tasks.serving.kv import open_kv
    from tasks.serving.vectors import current_namespace

    kv = open_kv(settings)
    try:
        return current_namespace(kv)
    finally:
        kv.close()
