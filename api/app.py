"""Minimal online recommendation API (FastAPI).

``GET /recommend/{user_id}?k=&dpp=&theta=``, ``GET /similar/{illust_id}?k=``, ``GET /healthz``,
``GET /version``.

Recommend: a fresh precomputed list (``<ns>:topn:<uid>``) if present -> else the user's vector
(KV, or the user tower over their history when it is missing) -> ANN on the Milvus collection
the live KV namespace was built with (so one KV pointer switch moves both stores) plus the
hot, followed-artists'-new-works and item-CF channels, merged round-robin by channel head ->
drop seen items -> optional DPP re-rank -> ids with score and channel.

It degrades instead of failing: Milvus down -> the other channels; KV down or unknown user
-> the hot list (a copy of the last one read is kept in memory as the final fallback);
model down -> precomputed or hot. Bad input is a 4xx with a message naming the value.
Long-lived clients (KV, MilvusClient, model) are created once at startup in ``app.state``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tasks.core.common import get_logger
from tasks.core.settings import Settings, load_settings

log = get_logger("api")

MAX_K = 200
I2I_SEEDS = 5
NAMESPACE_TTL_S = 1.0


@dataclass
class NamespaceView:
    """What the live KV namespace says, cached briefly so a request costs no extra lookup."""

    name: str | None
    meta: dict[str, Any] | None
    topn_fresh: bool
    hot: list[tuple[int, float]]
    read_at: float


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
        try:
            self.namespace()
        except Exception as exc:
            log.warning("could not read the live namespace at startup: %s", exc)

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
        topn_fresh = False
        hot: list[tuple[int, float]] = []
        if name and meta:
            raw_topn, raw_hot = self.kv.mget([topn_meta_key(name), hot_key(name)])
            hot = decode_scored(raw_hot)
            topn_fresh = topn_is_fresh(meta, raw_topn, self.precompute_max_age)
        if hot:
            self.last_hot = hot
        view = NamespaceView(name, meta, topn_fresh, hot or self.last_hot, time.monotonic())
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
    hits = state.milvus.search(
        collection,
        data=[np.asarray(vector, dtype=np.float32).tolist()],
        limit=limit,
        anns_field="embedding",
        output_fields=[],
    )
    return [(int(h["illust_id"]), float(h["distance"])) for h in hits[0]]


def _item_vectors(state: ServingState, collection: str, ids: list[int]) -> dict[int, np.ndarray]:
    if state.milvus is None:
        raise ConnectionError("Milvus is not available")
    rows = state.milvus.query(collection, ids=ids, output_fields=["illust_id", "embedding"])
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
    from tasks.serving.recall import (
        combine_neighbors,
        decode_ids,
        decode_scored,
        decode_vector,
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
            log.warning("user tower failed for %s: %s", user_id, exc)
            degraded.append("model")
    elif vector is None and history:
        degraded.append("model")
    if vector is None and not seen and not history:
        return _hot_answer(state, k, seen, degraded + ["unknown_user"], namespace=ns)

    pool = k * 3 if dpp else k
    channels: list[tuple[str, list[tuple[int, float]]]] = []
    if vector is not None:
        try:
            limit = min(pool + len(seen), 16_384)
            channels.append(("ann", _ann(state, _collection(view), vector, limit)))
        except Exception as exc:
            log.warning("ANN failed for user %s: %s", user_id, exc)
            degraded.append("milvus")
    if history:
        try:
            raw_i2i = state.kv.mget([i2i_key(ns, i) for i in history[:I2I_SEEDS]])
            channels.append(
                ("i2i", combine_neighbors((decode_scored(r) for r in raw_i2i), n=pool + len(seen)))
            )
        except Exception as exc:
            log.warning("i2i read failed for user %s: %s", user_id, exc)
            degraded.append("kv_i2i")
    follow = decode_ids(raw_follow)
    if follow:
        channels.append(("follow_new", [(i, 1.0 / (r + 1)) for r, i in enumerate(follow)]))
    channels.append(("hot", view.hot))
    candidates = merge_round_robin(channels, pool, exclude=seen)

    if dpp and len(candidates) > 1:
        try:
            vectors = _item_vectors(state, _collection(view), [c.illust_id for c in candidates])
            usable = [c for c in candidates if c.illust_id in vectors]
            mat = np.stack([vectors[c.illust_id] for c in usable])
            quality = mat @ vector if vector is not None else np.array([c.score for c in usable])
            order = dpp_rerank(quality, mat, k, theta=theta, window=window)
            candidates = [usable[i] for i in order]
        except Exception as exc:
            log.warning("DPP skipped for user %s: %s", user_id, exc)
            degraded.append("dpp")
    return {
        "source": "realtime",
        "items": _items(candidates[:k]),
        "degraded": degraded,
        "namespace": ns,
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
        log.warning("ANN failed for /similar/%s: %s", illust_id, exc)
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


def create_app(settings: Settings | None = None, *, max_k: int = MAX_K) -> FastAPI:
    """Build the API; clients open in the lifespan (use TestClient as a context manager)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServingState(settings or load_settings())
        state.open()
        app.state.serving = state
        log.info(
            "API up: model v%s, KV %s, Milvus %s",
            state.model_version,
            "up" if state.kv else "down",
            "up" if state.milvus else "down",
        )
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="recsys4pix", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"error": "; ".join(problems)})

    @app.exception_handler(Exception)
    async def never_5xx(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        state: ServingState = request.app.state.serving
        return JSONResponse(status_code=200, content=_hot_answer(state, 20, set(), ["internal"]))

    def serving(request: Request) -> ServingState:
        return request.app.state.serving

    @app.get("/recommend/{user_id}")
    def recommend(
        request: Request,
        user_id: int = Path(..., ge=0, description="user id"),
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
        return {"user_id": user_id, **answer}

    @app.get("/similar/{illust_id}")
    def similar(
        request: Request,
        illust_id: int = Path(..., ge=0, description="illust id"),
        k: int = Query(20, ge=1, le=max_k, description="number of items"),
    ) -> dict[str, Any]:
        state = serving(request)
        try:
            answer = similar_to(state, illust_id, k)
        except Exception as exc:
            log.exception("similar failed for %s", illust_id)
            answer = _hot_answer(state, k, set(), ["internal:" + type(exc).__name__])
        return {"illust_id": illust_id, **answer}

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, Any]:
        state = serving(request)
        checks = {"kv": False, "milvus": False, "model": state.model is not None}
        try:
            checks["kv"] = bool(state.kv is not None and state.kv.ping())
        except Exception:
            checks["kv"] = False
        try:
            checks["milvus"] = state.milvus is not None and isinstance(
                state.milvus.list_collections(), list
            )
        except Exception:
            checks["milvus"] = False
        return {"status": "ok" if all(checks.values()) else "degraded", **checks}

    @app.get("/version")
    def version(request: Request) -> dict[str, Any]:
        from tasks.serving.vectors import alias_target

        state = serving(request)
        out: dict[str, Any] = {
            "model_version": state.model_version,
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
