"""Minimal online recommendation API (FastAPI).

``GET /recommend/{user_id}?k=&dpp=&theta=``, ``GET /similar/{illust_id}?k=``, ``GET /healthz``,
``GET /version``.

Recommend: a fresh precomputed list (``<ns>:topn:<uid>``) if present -> else the user's vector
(KV, or the user tower over their history when it is missing) -> ANN on the Milvus collection
the live KV namespace was built with (so one KV pointer switch moves both stores) plus the
hot, followed-artists'-new-works and item-CF channels, merged round-robin by channel head
into a pool (minus seen items) -> when a ranker is deployed, ONE batched ranker call over a
pool of ~200 (``tasks.serving.ranking``: the training feature code, the candidates' recall
evidence) sorts the pool by P(bookmark) -> top-k -> optional DPP re-rank (quality = the
ranker's scores) -> ids with score and channel. ``ranked`` says whether the ranker ordered the
list (precomputed lists: whether precompute ranked them).

It degrades instead of failing: Milvus down -> the other channels; KV down or unknown user
-> the hot list (a copy of the last one read is kept in memory as the final fallback);
model down -> precomputed or hot; ranker down, erroring or slow (tight timeout), or its
features unavailable -> today's round-robin order with ``ranker`` / ``ranker_features`` in
``degraded`` (no ranker deployed is not degraded: ``ranked`` is false). Bad input is a 422 ``{"error": ..., "request_id": ...}``
naming the value (ids are positive int64). Long-lived clients (KV, MilvusClient, model) are
created once at startup in ``app.state``; the live collection is loaded then and whenever the
live namespace (or the ``items`` alias it falls back to) names another one, since a collection
built by another process is ``NotLoad`` here. ``/healthz`` is a readiness check: 503 naming the
failing parts unless a real search, a KV read of the live namespace and a model call work.
Every response carries ``X-Request-ID`` (the caller's, if sane, else a fresh one), also in the
JSON bodies. Repeated failures log once with a traceback, then one line per kind every
``LOG_EVERY_S`` seconds with a count (pymilvus' own error logs included). ``/docs`` serves
Swagger UI from the pinned ``swagger-ui-bundle-v2`` package (Swagger UI 5: renders OpenAPI 3.1): no CDN.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tasks.core.common import get_logger
from tasks.core.settings import Settings, load_settings

log = get_logger("api")

MAX_K = 200
CORE_PARTS = ("kv", "milvus", "model")
NAMESPACE_TTL_S = 1.0
INT64_MAX = 2**63 - 1
LOG_EVERY_S = 10.0
SWAGGER_STATIC = "/static/swagger-ui"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


# -- response models (the OpenAPI spec documents exactly what is returned) -----------------
class Item(BaseModel):
    """One recommended illust."""

    illust_id: int = Field(description="the illust's id")
    score: float = Field(
        description="the ranker's P(bookmark) when the list is ranked, else the channel's "
        "score (higher is better)"
    )
    channel: str = Field(description="where it came from: precomputed, ann, i2i, follow_new or hot")


class _Answer(BaseModel):
    source: str = Field(
        description="the path that answered: precomputed, realtime, ann, i2i or hot"
    )
    items: list[Item]
    degraded: list[str] = Field(
        description="dependencies that failed and were worked around: kv, milvus, model "
        "(user tower), kv_i2i, dpp, ranker (the ranker call failed, timed out or answered "
        "nonsense: round-robin order), ranker_features (the ranker's features could not be "
        "built: round-robin order), unknown_user, no_namespace, internal"
    )
    ranked: bool = Field(
        False,
        description="true when the ranker ordered the list (realtime: this request's ranker "
        "call; precomputed: the precompute ranked it); false = round-robin order or a fallback",
    )
    request_id: str = Field(description="also sent as the X-Request-ID header")


class RecommendResponse(_Answer):
    """``/recommend``: up to ``k`` items the user has not seen."""

    user_id: int
    namespace: str | None = Field(None, description="the live KV namespace that was read")


class SimilarResponse(_Answer):
    """``/similar``: up to ``k`` items near the given one."""

    illust_id: int


class ErrorResponse(BaseModel):
    """Every 4xx: a message naming the bad value."""

    error: str
    request_id: str


class HealthResponse(BaseModel):
    """Readiness: each part is checked the way requests use it."""

    status: Literal["ok", "degraded"]
    kv: bool = Field(description="the live namespace's pointer and meta can be read")
    milvus: bool = Field(description="a search on the live collection answers")
    model: bool = Field(description="the live model's user tower answers")
    ranker: bool | None = Field(
        None,
        description="the live ranker answers a one-row call (absent when none is deployed); "
        "informational: a ranker failure degrades lists, it does not fail readiness",
    )
    failing: dict[str, str] | None = Field(None, description="why each failing part failed")


# -- logging -------------------------------------------------------------------------------
class RateLimitedLog(logging.Filter):
    """Let the first record of each kind through whole (traceback included), then at most one
    single-line summary with a count every ``every_s`` seconds.

    A kind is the logger plus the message template (numbers blanked when the message comes
    preformatted, as pymilvus' do) plus the exception type, so a dependency that is down
    costs a few lines per ``every_s`` instead of a traceback per request.
    """

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        super().__init__()
        self.every_s = every_s
        self._kinds: dict[tuple[str, str, str], list[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _kind(record: logging.LogRecord) -> tuple[str, str, str]:
        template = str(record.msg)
        if not record.args:
            template = re.sub(r"\d+(?:\.\d+)?", "#", template.split("\n", 1)[0])[:300]
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        if not exc and isinstance(record.args, tuple):
            exc = ",".join(type(a).__name__ for a in record.args if isinstance(a, BaseException))
        return record.name, template, exc

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = self._kind(record)
        now = time.monotonic()
        with self._lock:
            entry = self._kinds.get(key)
            if entry is None or (entry[1] == 0 and now - entry[0] >= self.every_s):
                if len(self._kinds) > 1000:
                    self._kinds.clear()
                self._kinds[key] = [now, 0]
                return True  # first of its kind (or first after a quiet window): whole
            if now - entry[0] < self.every_s:
                entry[1] += 1
                return False
            count = int(entry[1])
            self._kinds[key] = [now, 0]
        first_line = record.getMessage().split("\n", 1)[0]
        record.msg = (
            f"{first_line} [{count + 1} times in the last {self.every_s:g}s; "
            "traceback at the first one]"
        )
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def _rate_limited_loggers() -> list[logging.Filterer]:
    """Where the limiter goes: our logger and pymilvus' own handlers (it does not propagate)."""
    targets: list[logging.Filterer] = [log]
    for name in ("pymilvus", "pymilvus.milvus_client"):
        targets.extend(logging.getLogger(name).handlers)
    return targets


# -- request id ----------------------------------------------------------------------------
_Scope = MutableMapping[str, Any]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class RequestIdMiddleware:
    """Pure ASGI (cheap): ``scope["state"]["request_id"]`` and an ``X-Request-ID`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: Any, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if not _REQUEST_ID_RE.match(rid):
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        raw = rid.encode()

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "")) or uuid.uuid4().hex


@dataclass
class NamespaceView:
    """What the live KV namespace says, cached briefly so a request costs no extra lookup."""

    name: str | None
    meta: dict[str, Any] | None
    topn_fresh: bool
    hot: list[tuple[int, float]]
    read_at: float
    topn_ranked: bool = False


@dataclass
class ServingState:
    """Long-lived clients and caches shared by all requests."""

    settings: Settings
    kv: Any = None
    milvus: Any = None
    model: Any = None
    model_version: int | None = None
    precompute_max_age: timedelta = timedelta(days=1)
    last_hot: list[tuple[int, float]] = field(default_factory=list)
    view: NamespaceView | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: set[str] = field(default_factory=set)
    ranking: bool = True  # False: never rank (the bench's served_no_ranker)
    ranker: Any = None
    ranker_version: int | None = None
    ranker_history: tuple[int, int] = (0, 0)
    features: Any = None  # tasks.serving.ranking.RankingFeatures of the live namespace
    features_failed: str | None = None  # the namespace whose features could not be built
    rank_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- startup ------------------------------------------------------------------------
    def open(self) -> None:
        """Open every client; a dependency that is down is logged and left as None."""
        from tasks.serving.kv import open_kv

        try:
            self.kv = open_kv(self.settings)
        except Exception as exc:
            log.warning("KV unavailable at startup: %s", exc)
        try:
            from tasks.serving.vectors import open_milvus

            self.milvus = open_milvus(self.settings, timeout=5)
        except Exception as exc:
            log.warning("Milvus unavailable at startup: %s", exc)
        self.load_model()
        self.load_ranker()
        try:
            self.namespace()
        except Exception as exc:
            log.warning("could not read the live namespace at startup: %s", exc)
            self.ensure_collection(None)  # KV down: at least the alias' collection

    def ensure_collection(self, view: NamespaceView | None) -> None:
        """Load the collection requests will search, once per collection name.

        The collection was built (and loaded) by another process, the refresh; here, after
        any restart, it is ``NotLoad`` and every search would fail. Checked at startup and
        whenever the namespace is re-read, so an alias/namespace switch loads the new one.
        """
        if self.milvus is None:
            return
        from tasks.serving.vectors import ITEMS_ALIAS, alias_target, ensure_loaded

        name = _collection(view)
        try:
            target = alias_target(self.milvus) if name == ITEMS_ALIAS else name
            if target is None or target in self.loaded:
                return
            with self.lock:
                if target not in self.loaded:
                    ensure_loaded(self.milvus, target)
                    self.loaded = self.loaded | {target}
        except Exception as exc:
            log.warning("could not load collection %s: %s", name, exc, exc_info=True)

    def forget_loaded(self, collection: str, exc: Exception) -> None:
        """A search said the collection is released: load it again at the next re-read."""
        if "load" in str(exc).lower():
            self.loaded = {c for c in self.loaded if c != collection}
            self.view = None

    def load_model(self) -> None:
        """The live model: TF-Serving client if configured, else the SavedModel in process."""
        from tasks.serving.deploy import live_model_dir, live_version

        try:
            self.model_version = live_version(self.settings)
            if self.model_version is None:
                return
            if self.settings.tfserving_url:
                from tasks.serving.tfserving import TFServingClient

                self.model = TFServingClient(
                    self.settings.tfserving_url,
                    self.settings.model_name,
                    version=self.model_version,
                    timeout=2.0,
                )
            else:
                from tasks.serving.local_model import LocalModel

                self.model = LocalModel(live_model_dir(self.settings), version=self.model_version)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("model unavailable: %s", exc)
            self.model = None

    def load_ranker(self) -> None:
        """The live ranker (TF-Serving REST if configured, else in process), if deployed."""
        if not self.ranking:
            return
        from tasks.model.features import HISTORY_LEN
        from tasks.serving.ranking import open_ranker, ranker_history_len

        try:
            ranker, model_dir = open_ranker(self.settings)
        except Exception as exc:
            log.warning("ranker unavailable: %s", exc)
            ranker, model_dir = None, None
        self.ranker = ranker
        self.ranker_version = None if ranker is None else ranker.version
        self.ranker_history = ranker_history_len(model_dir, HISTORY_LEN)
        self.features = None
        self.features_failed = None

    def check_model(self) -> None:
        """Follow the two-tower's ``LIVE`` pointer (a deploy or rollback): reload on a change.

        An API started before the first deploy picks the model up without a restart.
        """
        from tasks.serving.deploy import live_version

        try:
            version = live_version(self.settings)
        except Exception as exc:
            log.warning("could not read the model's live version: %s", exc)
            return
        if version != self.model_version:
            log.info("model live version %s -> %s: reloading", self.model_version, version)
            self.load_model()

    def check_ranker(self) -> None:
        """Follow the ranker's ``LIVE`` pointer (a deploy or rollback): reload on a change."""
        if not self.ranking:
            return
        from tasks.serving.ranking import live_ranker

        try:
            version, _ = live_ranker(self.settings)
        except Exception as exc:
            log.warning("could not read the ranker's live version: %s", exc)
            return
        if version != self.ranker_version:
            log.info("ranker live version %s -> %s: reloading", self.ranker_version, version)
            self.load_ranker()

    def ranking_features(self, view: NamespaceView) -> Any:
        """The ranker's feature source for ``view``'s namespace (built once per namespace).

        None when it cannot be built (the recsys DB down, no ``data_as_of``); retried when the
        namespace changes.
        """
        from tasks.serving.ranking import RankingFeatures

        features = self.features
        if features is not None and features.namespace == view.name:
            return features
        if self.features_failed == view.name:
            return None
        with self.rank_lock:
            if self.features is not None and self.features.namespace == view.name:
                return self.features
            try:
                history_len, tag_history_len = self.ranker_history
                self.features = RankingFeatures.from_mirror(
                    self.settings,
                    str((view.meta or {})["data_as_of"]),
                    history_len=history_len,
                    tag_history_len=tag_history_len,
                    namespace=view.name,
                )
                self.features_failed = None
            except Exception as exc:
                log.warning("ranking features for %s failed: %s", view.name, exc, exc_info=True)
                self.features, self.features_failed = None, view.name
            return self.features

    def close(self) -> None:
        for client in (self.kv, self.milvus):
            try:
                if client is not None:
                    client.close()
            except Exception as exc:  # closing a broken client must not block shutdown
                log.warning("closing %s failed: %s", type(client).__name__, exc)

    # -- namespace ------------------------------------------------------------------------
    def namespace(self) -> NamespaceView:
        """The live namespace, its meta, topn freshness and hot list (cached ~1 s)."""
        from tasks.serving.namespace import (
            current_namespace,
            hot_key,
            namespace_meta,
            topn_is_fresh,
            topn_meta_key,
        )
        from tasks.serving.recall import decode_scored

        view = self.view
        if view is not None and time.monotonic() - view.read_at < NAMESPACE_TTL_S:
            return view
        if self.kv is None:
            raise ConnectionError("KV store is not available")
        name = current_namespace(self.kv)
        meta = namespace_meta(self.kv, name) if name else None
        topn_fresh = topn_ranked = False
        hot: list[tuple[int, float]] = []
        if name and meta:
            raw_topn, raw_hot = self.kv.mget([topn_meta_key(name), hot_key(name)])
            hot = decode_scored(raw_hot)
            topn_fresh = topn_is_fresh(meta, raw_topn, self.precompute_max_age)
            topn_ranked = bool(raw_topn and json.loads(raw_topn).get("ranker_version"))
        if hot:
            self.last_hot = hot
        view = NamespaceView(
            name, meta, topn_fresh, hot or self.last_hot, time.monotonic(), topn_ranked
        )
        self.check_model()
        self.check_ranker()
        self.ensure_collection(view)
        self.view = view
        return view


def _items(candidates: list[Any]) -> list[dict[str, Any]]:
    return [{"illust_id": c.illust_id, "score": c.score, "channel": c.channel} for c in candidates]


def _hot_answer(
    state: ServingState, k: int, exclude: set[int], degraded: list[str], **extra: Any
) -> dict[str, Any]:
    from tasks.serving.recall import merge_round_robin

    hot = state.view.hot if state.view else state.last_hot
    picked = merge_round_robin({"hot": hot}, k, exclude=exclude)
    if len(picked) < k and exclude:  # better a seen item than a short list
        picked = merge_round_robin({"hot": hot}, k)
    return {"source": "hot", "items": _items(picked), "degraded": degraded, **extra}


def _collection(view: NamespaceView | None) -> str:
    """The Milvus collection the live KV namespace was built with (its ``meta``).

    Searching it, not the ``items`` alias, keeps user vectors (KV) and item vectors (Milvus)
    from one model version: the KV pointer is the one switch readers follow, even while a
    refresh moves the alias and the pointer one after the other. The alias is the fallback
    for a namespace whose meta names no collection.
    """
    from tasks.serving.vectors import ITEMS_ALIAS

    meta = view.meta if view is not None else None
    return str(meta.get("collection") or ITEMS_ALIAS) if meta else ITEMS_ALIAS


def _ann(
    state: ServingState, collection: str, vector: np.ndarray, limit: int
) -> list[tuple[int, float]]:
    if state.milvus is None:
        raise ConnectionError("Milvus is not available")
    try:
        hits = state.milvus.search(
            collection,
            data=[np.asarray(vector, dtype=np.float32).tolist()],
            limit=limit,
            anns_field="embedding",
            output_fields=[],
        )
    except Exception as exc:
        state.forget_loaded(collection, exc)
        raise
    return [(int(h["illust_id"]), float(h["distance"])) for h in hits[0]]


def _item_vectors(state: ServingState, collection: str, ids: list[int]) -> dict[int, np.ndarray]:
    if state.milvus is None:
        raise ConnectionError("Milvus is not available")
    try:
        rows = state.milvus.query(collection, ids=ids, output_fields=["illust_id", "embedding"])
    except Exception as exc:
        state.forget_loaded(collection, exc)
        raise
    return {int(r["illust_id"]): np.asarray(r["embedding"], dtype=np.float32) for r in rows}


def recommend_for(
    state: ServingState,
    user_id: int,
    k: int,
    *,
    dpp: bool = False,
    theta: float = 0.5,
    window: int | None = None,
) -> dict[str, Any]:
    """The recommend flow with its fallbacks (see the module docstring)."""
    from tasks.serving.dpp import dpp_rerank
    from tasks.serving.namespace import (
        follow_new_key,
        hist_key,
        i2i_key,
        seen_key,
        topn_key,
        user_vec_key,
    )
    from tasks.serving.ranking import RANK_POOL, build_pool, rank_pool
    from tasks.serving.recall import (
        I2I_SEEDS,
        combine_neighbors,
        decode_ids,
        decode_scored,
        decode_vector,
        follow_new_scored,
        merge_round_robin,
    )

    degraded: list[str] = []
    try:
        view = state.namespace()
    except Exception as exc:
        log.warning("KV down for /recommend/%s: %s", user_id, exc)
        return _hot_answer(state, k, set(), ["kv"], namespace=None)
    ns = view.name
    if ns is None:
        return _hot_answer(state, k, set(), ["no_namespace"], namespace=None)
    try:
        if view.topn_fresh and not dpp:
            top = state.kv.zrevrange(topn_key(ns, user_id), 0, k - 1)
            if top:
                from tasks.serving.recall import Candidate

                picked = [Candidate(int(m), s, "precomputed") for m, s in top]
                if len(picked) < k:
                    picked += merge_round_robin(
                        {"hot": view.hot}, k - len(picked), exclude={c.illust_id for c in picked}
                    )
                return {
                    "source": "precomputed",
                    "items": _items(picked),
                    "degraded": degraded,
                    "namespace": ns,
                    "ranked": view.topn_ranked,
                }
        raw_vec, raw_seen, raw_hist, raw_follow = state.kv.mget(
            [
                user_vec_key(ns, user_id),
                seen_key(ns, user_id),
                hist_key(ns, user_id),
                follow_new_key(ns, user_id),
            ]
        )
    except Exception as exc:
        log.warning("KV read failed for user %s: %s", user_id, exc)
        return _hot_answer(state, k, set(), ["kv"], namespace=ns)
    seen = set(decode_ids(raw_seen))
    history = decode_ids(raw_hist)
    vector = decode_vector(raw_vec)
    if vector is None and history and state.model is not None:
        from tasks.model.features import HISTORY_LEN, BookmarkHistory

        try:
            out = state.model.predict(
                "user_tower",
                {
                    "user_id": np.array([user_id], np.int64),
                    # hist:<uid> is refresh's cut (newest first); laid out as everywhere else.
                    "history": BookmarkHistory.pad([history], HISTORY_LEN),
                },
            )
            vector = np.asarray(out["embedding"][0], dtype=np.float32)
        except Exception as exc:
            log.warning("user tower failed for %s: %s", user_id, exc, exc_info=True)
            degraded.append("model")
    elif vector is None and history:
        degraded.append("model")
    if vector is None and not seen and not history:
        return _hot_answer(state, k, seen, degraded + ["unknown_user"], namespace=ns)

    pool = k * 3 if dpp else k
    # With a ranker: a pool of ~RANK_POOL from all channels for one batched call; without,
    # today's round-robin pool (what the fallback serves, too).
    fetch = max(RANK_POOL, pool) if state.ranker is not None else pool
    channels: list[tuple[str, list[tuple[int, float]]]] = []
    if vector is not None:
        try:
            limit = min(fetch + len(seen), 16_384)
            channels.append(("ann", _ann(state, _collection(view), vector, limit)))
        except Exception as exc:
            log.warning("ANN failed for user %s: %s", user_id, exc, exc_info=True)
            degraded.append("milvus")
    if history:
        try:
            raw_i2i = state.kv.mget([i2i_key(ns, i) for i in history[:I2I_SEEDS]])
            channels.append(
                ("i2i", combine_neighbors((decode_scored(r) for r in raw_i2i), n=fetch + len(seen)))
            )
        except Exception as exc:
            log.warning("i2i read failed for user %s: %s", user_id, exc)
            degraded.append("kv_i2i")
    follow = decode_ids(raw_follow)
    if follow:
        channels.append(("follow_new", follow_new_scored(follow)))
    channels.append(("hot", view.hot))
    ranked = rank_pool(
        build_pool(user_id, channels, fetch, exclude=seen),
        ranker=state.ranker,
        features=state.ranking_features(view) if state.ranker is not None else None,
    )
    degraded.extend(ranked.degraded)
    candidates = ranked.candidates[:pool]

    if dpp and len(candidates) > 1:
        try:
            vectors = _item_vectors(state, _collection(view), [c.illust_id for c in candidates])
            usable = [c for c in candidates if c.illust_id in vectors]
            mat = np.stack([vectors[c.illust_id] for c in usable])
            if ranked.ranked:  # the ranker's P(bookmark) is the quality
                quality = np.array([c.score for c in usable])
            elif vector is not None:
                quality = mat @ vector
            else:
                quality = np.array([c.score for c in usable])
            order = dpp_rerank(quality, mat, k, theta=theta, window=window)
            candidates = [usable[i] for i in order]
        except Exception as exc:
            log.warning("DPP skipped for user %s: %s", user_id, exc, exc_info=True)
            degraded.append("dpp")
    return {
        "source": "realtime",
        "items": _items(candidates[:k]),
        "degraded": degraded,
        "namespace": ns,
        "ranked": ranked.ranked,
    }


def similar_to(state: ServingState, illust_id: int, k: int) -> dict[str, Any]:
    """Nearest items to ``illust_id`` (ANN on its item vector); item-CF, then hot, as fallbacks."""
    from tasks.serving.namespace import i2i_key
    from tasks.serving.recall import Candidate, decode_scored

    degraded: list[str] = []
    try:
        live: NamespaceView | None = state.namespace()
    except Exception as exc:  # KV down: search the alias
        log.warning("KV down for /similar/%s: %s", illust_id, exc)
        live = None
    collection = _collection(live)
    try:
        vector = _item_vectors(state, collection, [illust_id]).get(illust_id)
        if vector is not None:
            hits = [(i, s) for i, s in _ann(state, collection, vector, k + 1) if i != illust_id]
            hits = hits[:k]
            return {
                "source": "ann",
                "items": _items([Candidate(i, s, "ann") for i, s in hits]),
                "degraded": degraded,
            }
    except Exception as exc:
        log.warning("ANN failed for /similar/%s: %s", illust_id, exc, exc_info=True)
        degraded.append("milvus")
    if live is None:
        degraded.append("kv")
        return _hot_answer(state, k, {illust_id}, degraded)
    try:
        if live.name:
            pairs = decode_scored(state.kv.get(i2i_key(live.name, illust_id)))[:k]
            if pairs:
                return {
                    "source": "i2i",
                    "items": _items([Candidate(i, s, "i2i") for i, s in pairs]),
                    "degraded": degraded,
                }
    except Exception as exc:
        log.warning("KV failed for /similar/%s: %s", illust_id, exc)
        degraded.append("kv")
    return _hot_answer(state, k, {illust_id}, degraded)


def readiness(state: ServingState) -> tuple[dict[str, bool], dict[str, str]]:
    """Check each part the way requests use it; returns (part -> ok, part -> why it failed).

    kv: the live pointer and its namespace's meta read back; milvus: a one-row search on the
    collection that namespace names (the alias' when KV is down); model: a user-tower call;
    ranker (only when one is deployed, not part of readiness): a one-row ``rank`` call.
    """
    from tasks.serving.namespace import current_namespace, namespace_meta

    failing: dict[str, str] = {}
    meta: dict[str, Any] | None = None
    try:
        if state.kv is None:
            raise ConnectionError("KV store is not available")
        name = current_namespace(state.kv)
        if not name:
            raise LookupError("no live namespace (no refresh has published one)")
        meta = namespace_meta(state.kv, name)
        if not meta:
            raise LookupError(f"live namespace {name} has no meta")
    except Exception as exc:
        failing["kv"] = f"{type(exc).__name__}: {exc}"
    try:
        if state.milvus is None:
            raise ConnectionError("Milvus is not available")
        collection = str(meta.get("collection") or "") if meta else ""
        collection = collection or _collection(None)  # no meta: the alias
        dim = int(meta["dim"]) if meta and meta.get("dim") else _dim(state, collection)
        if not _ann(state, collection, np.zeros(dim, np.float32), 1):
            raise LookupError(f"collection {collection} returned no hit")
    except Exception as exc:
        failing["milvus"] = f"{type(exc).__name__}: {exc}"
    try:
        if state.model is None:
            raise ConnectionError("no live model")
        from tasks.model.features import HISTORY_LEN

        out = state.model.predict(
            "user_tower",
            {"user_id": np.array([0], np.int64), "history": np.zeros((1, HISTORY_LEN), np.int64)},
        )
        if not np.all(np.isfinite(np.asarray(out["embedding"]))):
            raise ValueError("user tower returned non-finite values")
    except Exception as exc:
        failing["model"] = f"{type(exc).__name__}: {exc}"
    checks: dict[str, bool] = {part: part not in failing for part in CORE_PARTS}
    if state.ranker is not None:  # informational: a ranker failure only degrades lists
        from tasks.model.ranker.saved import sample_rank_inputs

        try:
            state.ranker.rank(sample_rank_inputs(1))
        except Exception as exc:
            failing["ranker"] = f"{type(exc).__name__}: {exc}"
        checks["ranker"] = "ranker" not in failing
    return checks, failing


def _dim(state: ServingState, collection: str) -> int:
    """The embedding field's dimension, when no namespace meta says it."""
    desc = state.milvus.describe_collection(collection)
    for f in desc.get("fields", []):
        if f.get("name") == "embedding":
            return int(f.get("params", {}).get("dim"))
    raise LookupError(f"collection {collection} has no embedding field")


_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "an invalid parameter, named with its value"},
}


def _add_offline_docs(app: FastAPI) -> None:
    """Swagger UI from the pinned ``swagger-ui-bundle-v2`` package's files (Swagger UI 5, OpenAPI 3.1): no CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(SWAGGER_STATIC, StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=None,
            swagger_js_url=f"{SWAGGER_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_STATIC}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        )


def create_app(
    settings: Settings | None = None, *, max_k: int = MAX_K, ranking: bool = True
) -> FastAPI:
    """Build the API; clients open in the lifespan (use TestClient as a context manager).

    ``ranking=False`` never loads the ranker: today's round-robin lists (a benchmark's
    ``served_no_ranker``), with nothing flagged.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiter = RateLimitedLog(LOG_EVERY_S)
        targets = _rate_limited_loggers()
        for target in targets:
            target.addFilter(limiter)
        state = ServingState(settings or load_settings(), ranking=ranking)
        state.open()
        app.state.serving = state
        log.info(
            "API up: model v%s, ranker v%s, KV %s, Milvus %s, loaded %s",
            state.model_version,
            state.ranker_version,
            "up" if state.kv else "down",
            "up" if state.milvus else "down",
            sorted(state.loaded),
        )
        try:
            yield
        finally:
            state.close()
            for target in targets:
                target.removeFilter(limiter)

    app = FastAPI(title="recsys4pix", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(RequestIdMiddleware)
    _add_offline_docs(app)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        body = ErrorResponse(error="; ".join(problems), request_id=_request_id(request))
        return JSONResponse(status_code=422, content=body.model_dump())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = ErrorResponse(error=str(exc.detail), request_id=_request_id(request))
        return JSONResponse(status_code=exc.status_code, content=body.model_dump())

    @app.exception_handler(Exception)
    async def never_5xx(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        state: ServingState = request.app.state.serving
        rid = _request_id(request)
        answer = _hot_answer(state, 20, set(), ["internal"], request_id=rid)
        return JSONResponse(status_code=200, content=answer, headers={"X-Request-ID": rid})

    def serving(request: Request) -> ServingState:
        return request.app.state.serving

    @app.get("/recommend/{user_id}", response_model=RecommendResponse, responses=_ERRORS)
    def recommend(
        request: Request,
        user_id: int = Path(..., ge=1, le=INT64_MAX, description="user id (positive int64)"),
        k: int = Query(20, ge=1, le=max_k, description="number of items"),
        dpp: bool = Query(False, description="diversify with DPP"),
        theta: float = Query(0.5, ge=0.0, le=1.0, description="DPP diversity weight"),
        window: int | None = Query(None, ge=1, le=max_k, description="DPP sliding window"),
    ) -> dict[str, Any]:
        state = serving(request)
        try:
            answer = recommend_for(state, user_id, k, dpp=dpp, theta=theta, window=window)
        except Exception as exc:
            log.exception("recommend failed for %s", user_id)
            answer = _hot_answer(state, k, set(), ["internal:" + type(exc).__name__])
        return {"user_id": user_id, "request_id": _request_id(request), **answer}

    @app.get("/similar/{illust_id}", response_model=SimilarResponse, responses=_ERRORS)
    def similar(
        request: Request,
        illust_id: int = Path(..., ge=1, le=INT64_MAX, description="illust id (positive int64)"),
        k: int = Query(20, ge=1, le=max_k, description="number of items"),
    ) -> dict[str, Any]:
        state = serving(request)
        try:
            answer = similar_to(state, illust_id, k)
        except Exception as exc:
            log.exception("similar failed for %s", illust_id)
            answer = _hot_answer(state, k, set(), ["internal:" + type(exc).__name__])
        return {"illust_id": illust_id, "request_id": _request_id(request), **answer}

    @app.get(
        "/healthz",
        response_model=HealthResponse,
        response_model_exclude_none=True,
        responses={503: {"model": HealthResponse, "description": "a part requests need is down"}},
    )
    def healthz(request: Request) -> JSONResponse:
        """Readiness: 200 when requests can be served (KV, Milvus, model), else 503 naming
        what failed; a failing ranker shows as ``ranker: false`` with status ``degraded``."""
        state = serving(request)
        with contextlib.suppress(Exception):  # readiness below names a KV failure
            state.namespace()  # (re)loads the live collection if needed
        checks, failing = readiness(state)
        down = any(part in failing for part in CORE_PARTS)
        body = HealthResponse(
            status="degraded" if failing else "ok", failing=failing or None, **checks
        )
        return JSONResponse(
            status_code=503 if down else 200, content=body.model_dump(exclude_none=True)
        )

    @app.get("/version")
    def version(request: Request) -> dict[str, Any]:
        from tasks.serving.vectors import alias_target

        state = serving(request)
        out: dict[str, Any] = {
            "model_version": state.model_version,
            "ranker_version": state.ranker_version,
            "collection": None,
            "kv_namespace": None,
            "items_alias_target": None,
        }
        try:
            view = state.namespace()
            out["kv_namespace"] = view.name
            if view.meta:
                out["collection"] = view.meta.get("collection")  # what ANN searches
                out["vectors_model_version"] = view.meta.get("version")
                out["data_as_of"] = view.meta.get("data_as_of")
        except Exception as exc:
            out["kv_error"] = str(exc)
        try:
            if state.milvus is not None:
                out["items_alias_target"] = alias_target(state.milvus)
        except Exception as exc:
            out["milvus_error"] = str(exc)
        return out

    return app
