"""The serving namespace: every KV key serving spells, the pointer, meta and freshness.

One vector refresh writes a complete copy of the serving data under the namespace
``v<version>_<YYYYmmddHHMMSS>`` (``refresh_tag``), then moves the pointer ``recsys:current``
to it; readers (API, precompute) resolve the pointer first. The keys, all built here:

====================================  ===========================================================
``recsys:current``                    the live namespace (``POINTER_KEY``)
``recsys:namespaces``                 sorted set of namespaces by publish order (``NAMESPACES_KEY``)
``<ns>:meta``                         JSON: version, collection, data_as_of, n_items, n_users, dim
``<ns>:user_vec:<uid>``               user vector (float32 LE)
``<ns>:hist:<uid>``                   recent history ids
``<ns>:seen:<uid>``                   ids the user has interacted with
``<ns>:follow_new:<uid>``             followed artists' new works
``<ns>:i2i:<iid>``                    item-CF neighbours
``<ns>:hot``                          hot list
``<ns>:topn:<uid>``                   precomputed top-N (sorted set, score = u.i)
``<ns>:topn_meta``                    JSON: data_as_of, n, n_users of the precomputed lists
====================================  ===========================================================

No other production module spells these strings (tests spell them out by hand, as the
contract); Redis and the file KV store hold them byte for byte as built here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tasks.core.common import get_logger
from tasks.core.db import get_engine
from tasks.core.schema import ensure_recsys_schema
from tasks.core.settings import Settings
from tasks.serving.kv import KVStore, open_kv

log = get_logger("namespace")

POINTER_KEY = "recsys:current"
NAMESPACES_KEY = "recsys:namespaces"
SEP = ":"


# -- names and keys ----------------------------------------------------------------------
def refresh_tag(version: int, as_of: datetime) -> str:
    """``v<version>_<YYYYmmddHHMMSS>``: the KV namespace; the collection is ``items_<tag>``.

    The data's own clock (newest mirrored interaction), not now(), so a re-run for the same
    model and data finds its own output.
    """
    return f"v{int(version)}_{as_of:%Y%m%d%H%M%S}"


def namespace_prefix(namespace: str) -> str:
    """``<ns>:``, the prefix every key of one namespace starts with (scans, deletes)."""
    return f"{namespace}{SEP}"


def _key(namespace: str, *parts: object) -> str:
    return SEP.join((namespace, *(str(p) for p in parts)))


def meta_key(namespace: str) -> str:
    return _key(namespace, "meta")


def user_vec_prefix(namespace: str) -> str:
    """``<ns>:user_vec:``: scan prefix of the user vectors."""
    return _key(namespace, "user_vec", "")


def user_vec_key(namespace: str, user_id: int) -> str:
    return _key(namespace, "user_vec", user_id)


def hist_key(namespace: str, user_id: int) -> str:
    return _key(namespace, "hist", user_id)


def seen_key(namespace: str, user_id: int) -> str:
    return _key(namespace, "seen", user_id)


def follow_new_key(namespace: str, user_id: int) -> str:
    return _key(namespace, "follow_new", user_id)


def i2i_key(namespace: str, illust_id: int) -> str:
    return _key(namespace, "i2i", illust_id)


def hot_key(namespace: str) -> str:
    return _key(namespace, "hot")


def topn_prefix(namespace: str) -> str:
    """``<ns>:topn:``: scan prefix of the precomputed sorted sets."""
    return _key(namespace, "topn", "")


def topn_key(namespace: str, user_id: int) -> str:
    return _key(namespace, "topn", user_id)


def topn_meta_key(namespace: str) -> str:
    return _key(namespace, "topn_meta")


def key_id(key: str) -> int:
    """The trailing id of a per-user or per-item key (``<ns>:user_vec:42`` -> 42)."""
    return int(key.rsplit(SEP, 1)[1])


# -- pointer and registry ----------------------------------------------------------------
def current_namespace(kv: KVStore) -> str | None:
    """The live namespace (``recsys:current``), or None before the first refresh."""
    raw = kv.get(POINTER_KEY)
    return raw.decode() if raw else None


def switch_namespace(kv: KVStore, namespace: str, order: float) -> None:
    """Register ``namespace`` and point ``recsys:current`` at it (one key write)."""
    kv.zadd(NAMESPACES_KEY, {namespace: order})
    kv.set(POINTER_KEY, namespace)
    log.info("KV pointer %s -> %s", POINTER_KEY, namespace)


def clear_namespace(kv: KVStore, namespace: str) -> int:
    """Delete every key of ``namespace``; returns how many were deleted."""
    return kv.delete_prefix(namespace_prefix(namespace))


def prune_namespaces(kv: KVStore, keep_last: int) -> tuple[str, ...]:
    """Delete namespaces beyond the newest ``keep_last`` (never the current one)."""
    current = current_namespace(kv)
    registered = [m for m, _ in kv.zrevrange(NAMESPACES_KEY, 0, -1)]
    dropped = tuple(ns for ns in registered[keep_last:] if ns != current)
    for ns in dropped:
        removed = clear_namespace(kv, ns)
        log.info("deleted old KV namespace %s (%d keys)", ns, removed)
    if dropped:
        _forget_namespaces(kv, dropped)
    return dropped


def _forget_namespaces(kv: KVStore, dropped: tuple[str, ...]) -> None:
    remaining = {m: s for m, s in kv.zrevrange(NAMESPACES_KEY, 0, -1) if m not in dropped}
    kv.delete(NAMESPACES_KEY)
    if remaining:
        kv.zadd(NAMESPACES_KEY, remaining)


# -- meta and freshness ------------------------------------------------------------------
def namespace_meta(kv: KVStore, namespace: str) -> dict[str, Any] | None:
    """The namespace's ``meta`` (None while it is incomplete: meta is written last)."""
    raw = kv.get(meta_key(namespace))
    return json.loads(raw) if raw else None


def write_meta(kv: KVStore, namespace: str, meta: Mapping[str, Any]) -> None:
    """Write ``<ns>:meta``: the last key of a refresh, marking the namespace complete."""
    kv.set(meta_key(namespace), json.dumps(dict(meta)))


def write_topn_meta(kv: KVStore, namespace: str, *, as_of: datetime, n: int, n_users: int) -> None:
    """Record the data time (never now()) the precomputed lists of ``namespace`` describe."""
    kv.set(
        topn_meta_key(namespace),
        json.dumps({"data_as_of": as_of.isoformat(), "n": n, "n_users": n_users}),
    )


def topn_is_fresh(meta: Mapping[str, Any], raw_topn_meta: bytes | None, max_age: timedelta) -> bool:
    """True when the precomputed lists lag the namespace's own data time by <= ``max_age``.

    ``raw_topn_meta`` is the stored ``<ns>:topn_meta`` (None when nothing was precomputed),
    passed raw so a reader can fetch it in the same round trip as its other keys.
    """
    if not raw_topn_meta:
        return False
    topn_asof = datetime.fromisoformat(json.loads(raw_topn_meta)["data_as_of"])
    data_asof = datetime.fromisoformat(meta["data_as_of"])
    return data_asof - topn_asof <= max_age


def serving_is_current(settings: Settings, version: int) -> bool:
    """True when the live KV namespace was built by ``version`` from the newest mirror data.

    The deploy DAG runs every few minutes; this lets it skip a refresh that would publish
    exactly what is already live, while new data or a new champion still refreshes.
    """
    from tasks.core.schema import mirror_interactions

    engine = get_engine(settings.recsys_db_url)
    ensure_recsys_schema(engine)
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
    kv = open_kv(settings)
    try:
        return current_namespace(kv)
    finally:
        kv.close()
