"""Refresh the serving vectors: item vectors into Milvus, user vectors and channel lists into KV.

Both stores are published atomically with the same pattern: write a complete new copy,
check it, then move one pointer.

* Milvus: item tower over every illust -> new collection ``items_v<version>_<as_of>``
  (``illust_id`` INT64 primary key, ``embedding`` FLOAT_VECTOR, ``artist_id`` INT64) ->
  insert in batches, flush, index (FLAT on Milvus Lite, AUTOINDEX on a server; inner product,
  the two-tower score), load, check the row count, then ``alter_alias`` / ``create_alias``
  ``items`` -> new collection. Older ``items_v*`` collections beyond ``keep_last`` are
  dropped afterwards, never the alias target.
* KV: everything under the namespace ``v<version>_<as_of>:`` (``user_vec:<uid>``,
  ``hist:<uid>``, ``seen:<uid>``, ``follow_new:<uid>``, ``i2i:<iid>``, ``hot``, ``meta``), then
  the pointer ``recsys:current`` is switched to it. Readers resolve the pointer first. Every
  key, the pointer and the meta are spelled in ``tasks.serving.namespace``.

The KV pointer is the one switch the online readers (API, precompute) follow: the namespace's
``meta`` names the collection it was built with, and they search that collection, not the
alias, so user vectors and item vectors always come from one model version even in the
moment between the alias switch and the pointer switch. The alias serves everyone else
(ad-hoc queries, dashboards) and names the same collection once a refresh has finished.

The name carries the data's own clock (``as_of`` = newest mirrored interaction), not now(), so
a re-run for the same model version and data finds and reuses its own complete output, and
new data with an unchanged champion gets a fresh copy instead of rewriting the live one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.common import StageResult, get_logger
from tasks.core.settings import Settings
from tasks.model.constants import HOT_N
from tasks.serving.kv import open_kv
from tasks.serving.namespace import (
    clear_namespace,
    current_namespace,
    follow_new_key,
    hist_key,
    hot_key,
    i2i_key,
    prune_namespaces,
    refresh_tag,
    seen_key,
    switch_namespace,
    user_vec_key,
    write_meta,
)

log = get_logger("vectors")

ITEMS_ALIAS = "items"
_COLLECTION_RE = re.compile(r"^items_v(\d+)_(\d{14})$")


class RefreshError(RuntimeError):
    """A refresh step's check failed; the published pointers were left untouched."""


@dataclass(frozen=True)
class RefreshResult(StageResult):
    """What refresh published: the collection behind ``items`` and the live KV namespace."""

    version: int
    collection: str
    kv_namespace: str
    n_items: int
    n_users: int
    data_as_of: datetime
    dim: int
    reused_collection: bool = False
    dropped_collections: tuple[str, ...] = ()
    dropped_namespaces: tuple[str, ...] = ()


# -- naming ------------------------------------------------------------------------------
def collection_name(version: int, as_of: datetime) -> str:
    """``items_<refresh_tag>``: the Milvus collection built with the KV namespace of that tag."""
    return f"items_{refresh_tag(version, as_of)}"


def _collection_order(name: str) -> tuple[str, int] | None:
    match = _COLLECTION_RE.match(name)
    return (match.group(2), int(match.group(1))) if match else None


# -- Milvus ------------------------------------------------------------------------------
def is_milvus_lite(uri: str) -> bool:
    """Milvus Lite takes a local ``.db`` file path; a server takes http(s)/tcp URIs."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def open_milvus(settings: Settings, *, timeout: float | None = None) -> Any:
    """A ``MilvusClient`` on ``settings.milvus_uri`` (creating a Lite file's folder)."""
    from pymilvus import MilvusClient

    if is_milvus_lite(settings.milvus_uri):
        Path(settings.milvus_uri).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"uri": settings.milvus_uri}
    if settings.milvus_token:
        kwargs["token"] = settings.milvus_token
    if timeout is not None:
        kwargs["timeout"] = timeout
    return MilvusClient(**kwargs)


def alias_target(client: Any, alias: str = ITEMS_ALIAS) -> str | None:
    """The collection behind ``alias``, or None when the alias does not exist."""
    from pymilvus.exceptions import MilvusException

    try:
        # Listing first avoids pymilvus logging a traceback for the expected "no alias yet".
        if alias not in client.list_aliases().get("aliases", []):
            return None
        return client.describe_alias(alias).get("collection_name")
    except MilvusException as exc:
        if "does not exist" in str(exc) or "not found" in str(exc):
            return None
        raise


def insert_vectors(
    client: Any,
    collection: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    artist_ids: np.ndarray | None = None,
    batch_size: int = 50_000,
) -> int:
    """Insert rows in batches: the refresh's write path (benched against one raw insert).

    Rows carry plain Python lists (pymilvus parses them about twice as fast as numpy rows),
    and the next batch is built while the previous insert is in flight, so a Milvus server
    works while this process prepares rows. (Milvus Lite 3 serves from threads inside this
    process, so there the overlap is limited by the GIL; batches stay large to keep the
    per-call overhead small.)
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    artists = np.zeros(len(ids), dtype=np.int64) if artist_ids is None else artist_ids
    id_list = np.asarray(ids, dtype=np.int64).tolist()
    artist_list = np.asarray(artists, dtype=np.int64).tolist()
    vec_array = np.asarray(vectors, dtype=np.float32)
    inserted = 0
    n_batches = (len(id_list) + batch_size - 1) // batch_size
    pending: Future[Any] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus-insert") as pool:
        for b, start in enumerate(range(0, len(id_list), batch_size), start=1):
            end = start + batch_size
            rows = [
                {"illust_id": i, "embedding": v, "artist_id": a}
                for i, v, a in zip(
                    id_list[start:end],
                    vec_array[start:end].tolist(),
                    artist_list[start:end],
                    strict=True,
                )
            ]
            if pending is not None:
                inserted += int(pending.result()["insert_count"])
            pending = pool.submit(client.insert, collection, rows)
            if b % 10 == 0 or b == n_batches:
                log.info(
                    "inserting into %s: batch %d/%d submitted, %d/%d rows confirmed",
                    collection,
                    b,
                    n_batches,
                    inserted,
                    len(id_list),
                )
        if pending is not None:
            inserted += int(pending.result()["insert_count"])
    log.info("inserted %d vectors into %s", inserted, collection)
    return inserted


def _row_count(client: Any, collection: str) -> int:
    return int(client.get_collection_stats(collection)["row_count"])


def build_item_collection(
    client: Any,
    name: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    artist_ids: np.ndarray | None = None,
    batch_size: int = 50_000,
    lite: bool = True,
) -> int:
    """Create ``name``, insert, flush, index, load and check the row count; returns it."""
    from pymilvus import DataType, MilvusClient

    dim = int(vectors.shape[1])
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("illust_id", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("artist_id", DataType.INT64)
    client.create_collection(name, schema=schema)
    insert_vectors(client, name, ids, vectors, artist_ids=artist_ids, batch_size=batch_size)
    client.flush(name)
    index = client.prepare_index_params()
    index.add_index(
        field_name="embedding", index_type="FLAT" if lite else "AUTOINDEX", metric_type="IP"
    )
    client.create_index(name, index)
    client.load_collection(name)
    return verify_collection(client, name, expected_rows=len(ids))


def ensure_loaded(client: Any, name: str) -> bool:
    """Load ``name`` unless it is loaded already; True when this call loaded it.

    A collection outlives the process that built and loaded it: after a Milvus (Lite) or
    client restart it is complete but ``NotLoad``, and search/query fail until it is loaded.
    """
    state = str(client.get_load_state(name).get("state"))
    if "NotLoad" not in state and "Loaded" in state:
        return False
    client.load_collection(name)
    log.info("loaded collection %s (was %s)", name, state)
    return True


def verify_collection(client: Any, name: str, *, expected_rows: int) -> int:
    """Raise ``RefreshError`` unless ``name`` is loaded and holds ``expected_rows`` rows."""
    rows = _row_count(client, name)
    if rows != expected_rows:
        raise RefreshError(f"collection {name} has {rows} rows, expected {expected_rows}")
    state = str(client.get_load_state(name).get("state"))
    if "Loaded" not in state:
        raise RefreshError(f"collection {name} is not loaded (state {state})")
    return rows


def switch_alias(client: Any, collection: str, alias: str = ITEMS_ALIAS) -> str | None:
    """Point ``alias`` at ``collection``; returns the previous target."""
    previous = alias_target(client, alias)
    if previous == collection:
        return previous
    if previous is None:
        client.create_alias(collection, alias)
    else:
        client.alter_alias(collection, alias)
    log.info("alias %s: %s -> %s", alias, previous, collection)
    return previous


def prune_collections(client: Any, keep_last: int, alias: str = ITEMS_ALIAS) -> tuple[str, ...]:
    """Drop ``items_v*`` collections beyond the newest ``keep_last``, never the alias target."""
    live = alias_target(client, alias)
    ours = sorted(
        (c for c in client.list_collections() if _collection_order(c)), key=_collection_order
    )
    keep = set(ours[-keep_last:]) | {live}
    dropped = tuple(c for c in ours if c not in keep)
    for name in dropped:
        client.drop_collection(name)
        log.info("dropped old collection %s", name)
    return dropped


def _embed(
    model: Any, signature: str, features: Mapping[str, np.ndarray], batch_size: int
) -> np.ndarray:
    """Run a tower over all rows in batches, logging progress."""
    n = len(next(iter(features.values())))
    parts: list[np.ndarray] = []
    n_batches = max((n + batch_size - 1) // batch_size, 1)
    for b, start in enumerate(range(0, n, batch_size), start=1):
        batch = {k: v[start : start + batch_size] for k, v in features.items()}
        parts.append(np.asarray(model.predict(signature, batch)["embedding"], dtype=np.float32))
        if b % 10 == 0 or b == n_batches:
            log.info("%s: embedded %d/%d rows", signature, min(start + batch_size, n), n)
    if not parts:
        raise RefreshError(f"{signature}: nothing to embed")
    out = np.concatenate(parts)
    if not np.all(np.isfinite(out)):
        raise RefreshError(f"{signature} produced non-finite vectors")
    return out


def open_model(settings: Settings, version: int, saved_model_dir: Path) -> Any:
    """TF-Serving client when ``settings.tfserving_url`` is set, else the model in process."""
    if settings.tfserving_url:
        from tasks.serving.tfserving import TFServingClient

        return TFServingClient(settings.tfserving_url, settings.model_name, version=version)
    from tasks.serving.local_model import LocalModel

    return LocalModel(saved_model_dir, version=version)


def _resolve_model(
    settings: Settings, version: int | None, saved_model_dir: str | Path | None
) -> tuple[int, Path]:
    from tasks.serving.deploy import live_version, model_base

    if version is None:
        version = live_version(settings)
        if version is None:
            raise RefreshError("no live model version: deploy one before refreshing vectors")
    path = Path(saved_model_dir) if saved_model_dir else model_base(settings) / str(version)
    if not settings.tfserving_url and not (path / "saved_model.pb").exists():
        raise RefreshError(f"version {version}: no SavedModel at {path}")
    return int(version), path


def build_kv_payload(
    namespace: str,
    *,
    user_ids: np.ndarray,
    user_vectors: np.ndarray,
    histories: np.ndarray,
    frames: Any,
    as_of: datetime,
    hot_n: int = HOT_N,
) -> dict[str, bytes]:
    """Every key of one namespace except ``meta`` (written last)."""
    from tasks.serving.recall import (
        encode_ids,
        encode_scored,
        encode_vector,
        follow_new_items,
        hot_items,
        item_cf_neighbors,
        seen_items,
    )

    payload: dict[str, bytes] = {}
    for uid, vec, hist in zip(user_ids.tolist(), user_vectors, histories, strict=True):
        payload[user_vec_key(namespace, uid)] = encode_vector(vec)
        recent = hist[hist > 0]
        if len(recent):
            payload[hist_key(namespace, uid)] = encode_ids(recent)
    for uid, items in seen_items(frames.interactions).items():
        payload[seen_key(namespace, uid)] = encode_ids(items)
    for uid, items in follow_new_items(frames.follows, frames.illusts, as_of=as_of).items():
        payload[follow_new_key(namespace, uid)] = encode_ids(items)
    for iid, pairs in item_cf_neighbors(frames.interactions).items():
        payload[i2i_key(namespace, iid)] = encode_scored(pairs)
    payload[hot_key(namespace)] = encode_scored(
        hot_items(frames.interactions, frames.illusts, as_of=as_of, n=hot_n)
    )
    return payload


def refresh_vectors(
    settings: Settings,
    *,
    version: int | None = None,
    saved_model_dir: str | Path | None = None,
    keep_last: int = 2,
    batch_size: int = 50_000,
    embed_batch_size: int = 4096,
) -> RefreshResult:
    """Publish item vectors (Milvus alias ``items``) and user vectors/channels (KV pointer).

    ``version`` defaults to the live deployed version (``tasks.serving.deploy.live_version``).
    """
    from tasks.core.db import get_engine
    from tasks.model.features import load_item_features, load_user_features
    from tasks.serving.recall import data_as_of, load_channel_frames

    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    version, model_dir = _resolve_model(settings, version, saved_model_dir)
    engine = get_engine(settings.recsys_db_url)
    frames = load_channel_frames(engine)
    as_of = data_as_of(frames.interactions)
    tag = refresh_tag(version, as_of)
    name = collection_name(version, as_of)
    # Counts by the training definition: every interaction up to and including the data clock.
    item_ids, item_features = load_item_features(engine, as_of=as_of + timedelta(seconds=1))
    user_ids, user_features = load_user_features(engine)
    if len(item_ids) == 0:
        raise RefreshError("mirror_illusts is empty: nothing to index")
    model = open_model(settings, version, model_dir)
    log.info(
        "refresh %s: %d illusts, %d users, model version %s",
        tag,
        len(item_ids),
        len(user_ids),
        version,
    )

    client = open_milvus(settings)
    try:
        reused = False
        if name in client.list_collections():
            if alias_target(client) == name:
                # Complete but released (built by an earlier process): load, then check it.
                ensure_loaded(client, name)
                verify_collection(client, name, expected_rows=len(item_ids))
                reused = True
                log.info("collection %s is already live and complete: reusing", name)
            else:
                log.info("dropping unpublished leftover collection %s before rebuilding", name)
                client.drop_collection(name)
        item_vectors = None
        if not reused:
            item_vectors = _embed(model, "item_tower", item_features, embed_batch_size)
            build_item_collection(
                client,
                name,
                item_ids,
                item_vectors,
                artist_ids=item_features["artist_id"],
                batch_size=batch_size,
                lite=is_milvus_lite(settings.milvus_uri),
            )
        user_vectors = _embed(model, "user_tower", user_features, embed_batch_size)
        dim = int(user_vectors.shape[1]) if item_vectors is None else int(item_vectors.shape[1])

        kv = open_kv(settings)
        try:
            if current_namespace(kv) != tag:
                clear_namespace(kv, tag)  # a failed earlier attempt's partial copy
            payload = build_kv_payload(
                tag,
                user_ids=user_ids,
                user_vectors=user_vectors,
                histories=user_features["history"],
                frames=frames,
                as_of=as_of,
            )
            kv.mset(payload)
            meta = {
                "version": version,
                "collection": name,
                "data_as_of": as_of.isoformat(),
                "n_items": len(item_ids),
                "n_users": len(user_ids),
                "dim": dim,
            }
            write_meta(kv, tag, meta)
            log.info("wrote %d keys under KV namespace %s", len(payload) + 1, tag)
            # Both copies are complete and checked: alias first, then the KV pointer, the
            # switch online readers follow (they search the collection its meta names).
            switch_alias(client, name)
            switch_namespace(kv, tag, as_of.timestamp() + version * 1e-3)
            dropped_ns = prune_namespaces(kv, keep_last)
        finally:
            kv.close()
        dropped = prune_collections(client, keep_last)
    finally:
        client.close()
    return RefreshResult(
        version=version,
        collection=name,
        kv_namespace=tag,
        n_items=len(item_ids),
        n_users=len(user_ids),
        data_as_of=as_of,
        dim=dim,
        reused_collection=reused,
        dropped_collections=dropped,
        dropped_namespaces=dropped_ns,
    )
