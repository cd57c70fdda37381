"""Precompute mode: top-N recommendations per active user as KV sorted sets.

For each user active in the last ``active_days`` of data, search the Milvus collection the
live KV namespace was built with (its ``meta``; the ``items`` alias names the same one once a
refresh has finished) with the user's vector from that namespace, drop what they have seen, and store the
best ``n`` as the sorted set ``<namespace>:topn:<uid>`` (member = illust_id, score = the
two-tower logit u.i, the inner product the index ranks by).

When a ranker is deployed, each user's list is ranked the way the API ranks
(``tasks.serving.ranking``): a pool of ``max(RANK_POOL, n)`` candidates from every channel (ANN,
item-CF, followed artists' new works, hot) -> one batched ranker call -> the best ``n`` by
P(bookmark) (the sorted set's scores). A user whose ranker call fails gets the ANN list above
(counted in ``n_fallback``). ``<namespace>:topn_meta`` records (with the ranker's version)
the data time the lists describe (the namespace's ``data_as_of``, never now()), which the
API compares with the namespace's own data time to decide whether the lists are fresh
(``tasks.serving.namespace.topn_is_fresh``; the keys are spelled there too).
Runs on its own schedule (its own DAG) after ``refresh_vectors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from tasks.core.common import StageResult, get_logger
from tasks.core.settings import Settings
from tasks.serving.kv import KVStore, open_kv
from tasks.serving.namespace import (
    current_namespace,
    follow_new_key,
    hist_key,
    hot_key,
    i2i_key,
    namespace_meta,
    seen_key,
    topn_key,
    topn_meta_key,
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
    ranker_version: int | None = None
    n_ranked: int = 0
    n_fallback: int = 0


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
    settings: Settings,
    *,
    n: int = 100,
    active_days: float = 30.0,
    batch_size: int = 256,
    rank: bool = True,
) -> PrecomputeResult:
    """Write ``<ns>:topn:<uid>`` sorted sets for active users under the live namespace.

    ``rank=False`` (or no deployed ranker): the two-tower's ANN lists only.
    """
    from tasks.core.db import get_engine
    from tasks.serving.recall import decode_ids, decode_scored, decode_vector
    from tasks.serving.vectors import ITEMS_ALIAS, RefreshError, open_milvus

    if not 1 <= n <= MAX_TOPK:
        raise ValueError(f"n must be in [1, {MAX_TOPK}], got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ranking = _open_ranking(settings) if rank else None
    kv = open_kv(settings)
    client = open_milvus(settings)
    n_ranked = n_fallback = 0
    try:
        namespace = current_namespace(kv)
        meta = namespace_meta(kv, namespace) if namespace else None
        if namespace is None or meta is None:
            raise RefreshError("no live KV namespace: run refresh_vectors first")
        as_of = datetime.fromisoformat(meta["data_as_of"])
        # the namespace's own collection, not the alias: user and item vectors of one model
        collection = str(meta.get("collection") or ITEMS_ALIAS)
        users = active_user_ids(get_engine(settings.recsys_db_url), as_of, active_days)
        fetch = n
        hot: list[tuple[int, float]] = []
        if ranking is not None:
            try:
                ranking.features_for(namespace, meta)
            except Exception as exc:  # no features: the ANN lists, as without a ranker
                log.warning("ranking features failed (%s): precomputing ANN lists", exc)
                ranking = None
        if ranking is not None:
            fetch = max(ranking.pool, n)
            hot = decode_scored(kv.get(hot_key(namespace)))
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
            limit = min(fetch + max(len(seen[i]) for i in present), MAX_TOPK)
            hits = client.search(
                collection,
                data=[np.asarray(vectors[i]).tolist() for i in present],
                limit=limit,
                anns_field="embedding",
                output_fields=[],
            )
            sets: dict[str, dict[str, float]] = {}
            for i, user_hits in zip(present, hits, strict=True):
                # each user's ANN list as long as the API's (evidence ranks match it)
                ann = [(int(h["illust_id"]), float(h["distance"])) for h in user_hits]
                ann = ann[: fetch + len(seen[i])]
                top = [(item, s) for item, s in ann if item not in seen[i]][:n]
                if ranking is not None:
                    by_ranker = ranking.top(kv, namespace, batch[i], ann, hot, seen[i], n, fetch)
                    n_ranked += by_ranker is not None
                    n_fallback += by_ranker is None
                    top = by_ranker if by_ranker is not None else top
                sets[topn_key(namespace, batch[i])] = {str(item): s for item, s in top}
            kv.zadd_many(sets, replace=True)
            written += len(sets)
            if b % 10 == 0 or b == n_batches:
                log.info("precomputed top-%d for %d/%d active users", n, written, len(users))
        ranker_version = ranking.version if ranking is not None and n_ranked else None
        _write_topn_meta(kv, namespace, as_of, n, written, ranker_version)
    finally:
        client.close()
        kv.close()
    log.info(
        "top-%d lists for %d users under %s (data as of %s); ranker v%s: %d ranked, %d fell back",
        n,
        written,
        namespace,
        as_of,
        ranker_version,
        n_ranked,
        n_fallback,
    )
    return PrecomputeResult(
        namespace, collection, written, n, as_of, ranker_version, n_ranked, n_fallback
    )


def _write_topn_meta(
    kv: KVStore,
    namespace: str,
    as_of: datetime,
    n: int,
    n_users: int,
    ranker_version: int | None,
) -> None:
    """``write_topn_meta``'s record plus, when the ranker ordered the lists, its version
    (``ranker_version``; absent = the two-tower's ANN order); the API reports it as ``ranked``."""
    write_topn_meta(kv, namespace, as_of=as_of, n=n, n_users=n_users)
    if ranker_version is None:
        return
    record = json.loads(kv.get(topn_meta_key(namespace)) or b"{}")
    record["ranker_version"] = ranker_version
    kv.set(topn_meta_key(namespace), json.dumps(record))


@dataclass
class _Ranking:
    """The live ranker and its feature source, for precompute (the API's ranking path)."""

    settings: Settings
    ranker: Any
    history: tuple[int, int]
    pool: int
    features: Any = None

    @property
    def version(self) -> int | None:
        return int(self.ranker.version) if self.ranker.version is not None else None

    def features_for(self, namespace: str, meta: dict[str, Any]) -> None:
        from tasks.serving.ranking import RankingFeatures

        self.features = RankingFeatures.from_mirror(
            self.settings,
            str(meta["data_as_of"]),
            history_len=self.history[0],
            tag_history_len=self.history[1],
            namespace=namespace,
        )

    def top(
        self,
        kv: KVStore,
        namespace: str,
        user_id: int,
        ann: list[tuple[int, float]],
        hot: list[tuple[int, float]],
        seen: set[int],
        n: int,
        fetch: int,
    ) -> list[tuple[int, float]] | None:
        """The user's best ``n`` by the ranker over every channel; None if ranking failed."""
        from tasks.serving.ranking import build_pool, rank_pool
        from tasks.serving.recall import (
            I2I_SEEDS,
            combine_neighbors,
            decode_ids,
            decode_scored,
            follow_new_scored,
        )

        raw_hist, raw_follow = kv.mget(
            [hist_key(namespace, user_id), follow_new_key(namespace, user_id)]
        )
        history = decode_ids(raw_hist)
        channels: list[tuple[str, list[tuple[int, float]]]] = [("ann", ann)]
        if history:
            raw_i2i = kv.mget([i2i_key(namespace, i) for i in history[:I2I_SEEDS]])
            lists = (decode_scored(r) for r in raw_i2i)
            channels.append(("i2i", combine_neighbors(lists, n=fetch + len(seen))))
        follow = decode_ids(raw_follow)
        if follow:
            channels.append(("follow_new", follow_new_scored(follow)))
        channels.append(("hot", hot))
        ranked = rank_pool(
            build_pool(user_id, channels, fetch, exclude=seen),
            ranker=self.ranker,
            features=self.features,
        )
        if not ranked.ranked:
            return None
        return [(c.illust_id, c.score) for c in ranked.candidates[:n]]


def _open_ranking(settings: Settings) -> _Ranking | None:
    """The live ranker without the API's back-off (every user is tried), or None."""
    from tasks.model.features import HISTORY_LEN
    from tasks.serving.ranking import RANK_POOL, GuardedRanker, open_ranker, ranker_history_len

    try:
        ranker, model_dir = open_ranker(settings, timeout=5.0)
    except Exception as exc:  # a ranker that cannot load: the ANN lists, as without one
        log.warning("ranker unavailable (%s): precomputing ANN lists", exc)
        return None
    if ranker is None:
        return None
    inner = ranker.inner if isinstance(ranker, GuardedRanker) else ranker
    log.info("ranking precomputed lists with ranker v%s", inner.version)
    return _Ranking(settings, inner, ranker_history_len(model_dir, HISTORY_LEN), RANK_POOL)
