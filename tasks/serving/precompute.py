"""Precompute mode: top-N recommendations per active user as KV sorted sets.

For each user active in the last ``active_days`` of data, search the Milvus collection the
live KV namespace was built with (its ``meta``; the ``items`` alias names the same one once a
refresh has finished) with the user's vector from that namespace, drop what they have seen, and store the
best ``n`` as the sorted set ``<namespace>:topn:<uid>`` (member = illust_id, score = the
two-tower logit u.i, the inner product the index ranks by). ``<namespace>:topn_meta`` records
the data time the lists describe (the namespace's ``data_as_of``, never now()), which the
API compares with the namespace's own data time to decide whether the lists are fresh
(``tasks.serving.namespace.topn_is_fresh``; the keys are spelled there too).
Runs on its own schedule (its own DAG) after ``refresh_vectors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import sqlalchemy as sa

from tasks.core.common import StageResult, get_logger
from tasks.core.settings import Settings
from tasks.serving.kv import open_kv
from tasks.serving.namespace import (
    current_namespace,
    namespace_meta,
    seen_key,
    topn_key,
    user_vec_key,
    write_topn_meta,
)

log = get_logger("precompute")

MAX_TOPK = 16_384  # Milvus' limit on a search's topk


@dataclass(frozen=True)
class PrecomputeResult(StageResult):
    """Where the lists went and for which data time."""

    kv_namespace: str
    collection: str
    n_users: int
    n: int
    data_as_of: datetime


def active_user_ids(engine: sa.Engine, as_of: datetime, active_days: float) -> list[int]:
    """Users with an interaction in ``[as_of - active_days, as_of]`` (from the mirror)."""
    from tasks.core.schema import mirror_interactions as mi

    query = (
        sa.select(mi.c.user_id)
        .where(mi.c.create_time >= as_of - timedelta(days=active_days))
        .where(mi.c.create_time <= as_of)
        .distinct()
        .order_by(mi.c.user_id)
    )
    with engine.connect() as conn:
        return [int(r[0]) for r in conn.execute(query)]


def precompute_topn(
    settings: Settings, *, n: int = 100, active_days: float = 30.0, batch_size: int = 256
) -> PrecomputeResult:
    """Write ``<ns>:topn:<uid>`` sorted sets for active users under the live namespace."""
    from tasks.core.db import get_engine
    from tasks.serving.recall import decode_ids, decode_vector
    from tasks.serving.vectors import ITEMS_ALIAS, RefreshError, open_milvus

    if not 1 <= n <= MAX_TOPK:
        raise ValueError(f"n must be in [1, {MAX_TOPK}], got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kv = open_kv(settings)
    client = open_milvus(settings)
    try:
        namespace = current_namespace(kv)
        meta = namespace_meta(kv, namespace) if namespace else None
        if namespace is None or meta is None:
            raise RefreshError("no live KV namespace: run refresh_vectors first")
        as_of = datetime.fromisoformat(meta["data_as_of"])
        # the namespace's own collection, not the alias: user and item vectors of one model
        collection = str(meta.get("collection") or ITEMS_ALIAS)
        users = active_user_ids(get_engine(settings.recsys_db_url), as_of, active_days)
        written = 0
        n_batches = max((len(users) + batch_size - 1) // batch_size, 1)
        for b, start in enumerate(range(0, len(users), batch_size), start=1):
            batch = users[start : start + batch_size]
            raw = kv.mget(
                [user_vec_key(namespace, u) for u in batch]
                + [seen_key(namespace, u) for u in batch]
            )
            vectors = [decode_vector(r) for r in raw[: len(batch)]]
            seen = [set(decode_ids(r)) for r in raw[len(batch) :]]
            present = [i for i, v in enumerate(vectors) if v is not None]
            if not present:
                continue
            limit = min(n + max(len(seen[i]) for i in present), MAX_TOPK)
            hits = client.search(
                collection,
                data=[np.asarray(vectors[i]).tolist() for i in present],
                limit=limit,
                anns_field="embedding",
                output_fields=[],
            )
            sets: dict[str, dict[str, float]] = {}
            for i, user_hits in zip(present, hits, strict=True):
                ranked = [h for h in user_hits if h["illust_id"] not in seen[i]][:n]
                sets[topn_key(namespace, batch[i])] = {
                    str(h["illust_id"]): float(h["distance"]) for h in ranked
                }
            kv.zadd_many(sets, replace=True)
            written += len(sets)
            if b % 10 == 0 or b == n_batches:
                log.info("precomputed top-%d for %d/%d active users", n, written, len(users))
        write_topn_meta(kv, namespace, as_of=as_of, n=n, n_users=written)
    finally:
        client.close()
        kv.close()
    log.info("top-%d lists for %d users under %s (data as of %s)", n, written, namespace, as_of)
    return PrecomputeResult(namespace, collection, written, n, as_of)
