"""The ranking stage of the online path: candidate pool -> one batched ranker call -> order.

A user's candidates come from every recall channel (ANN, item-CF, followed artists' new
works, hot; :mod:`tasks.serving.recall`), merged round-robin into a pool of about
:data:`RANK_POOL` (:func:`build_pool`); each candidate keeps its recall evidence (which
channels returned it, their scores and 1-based ranks). :func:`rank_pool` builds the ranker's
raw ``rank`` inputs with the training code (:class:`~tasks.model.ranker.features.
RankingFeatureBuilder`, so serving and training share every feature), makes ONE batched call
and returns the pool sorted by the ranker's P(bookmark). Any failure (no features, the ranker
down, an error, a timeout, a malformed answer) returns the round-robin order instead, flagged
in ``degraded`` (``ranker_features`` / ``ranker``); no ranker deployed is not a failure
(nothing flagged, ``ranked`` False).

Feature source: the recsys DB mirror as of the live KV namespace's ``data_as_of`` (the data's
clock, never now()); requests are featurised at ``data_as_of + 1 s``, so every event the
namespace was built from counts and nothing after it does (the point-in-time rule of training).

The ranker is served as model :func:`ranker_model_name` (default ``ranker``) under
``<serving_base>/ranker/<version>/``: over TF-Serving's REST API when ``tfserving_url`` is set
(:class:`RESTRanker`, a tight timeout), else in process (:class:`LocalRanker`). Both return
``float32[B]`` scores. The API (``api/app.py``) and precompute (:mod:`tasks.serving.precompute`)
both rank with :func:`rank_pool`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.core.common import get_logger
from tasks.core.settings import Settings
from tasks.model.ranker.features import RANK_INPUTS, RECALL_CHANNELS, RecallEvidence
from tasks.serving.recall import Candidate, merge_round_robin

log = get_logger("ranking")

RANK_SIGNATURE = "rank"
RANK_POOL = 200  # candidates per ranker call (the issue's ~200)
RANK_TIMEOUT_S = 0.5  # REST ranker call: tight, the list falls back to round robin
RETRY_AFTER_S = 1.0  # after a failed call, skip the ranker this long (no timeout per request)
DEFAULT_RANKER_NAME = "ranker"
REQUEST_DELAY = timedelta(seconds=1)  # request time = data_as_of + 1 s (module docstring)


class RankerError(RuntimeError):
    """The ranker could not score a pool (down, erroring, timed out, or a bad answer)."""


class Ranker(Protocol):
    """Anything that scores a batch of raw ``rank`` inputs."""

    version: int | None

    def rank(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """float32[B] P(bookmark) for the batch (raises ``RankerError``)."""
        ...


# -- where the ranker lives -------------------------------------------------------------------
def ranker_model_name(settings: Settings) -> str:
    """The ranker's TF-Serving model name (the settings' ``ranker_model_name`` when present)."""
    return str(getattr(settings, "ranker_model_name", "") or DEFAULT_RANKER_NAME)


def live_ranker(settings: Settings) -> tuple[int | None, Path | None]:
    """The ranker's verified live version and its directory (None, None before a deploy)."""
    from tasks.serving.deploy import live_model_dir, live_version

    name = ranker_model_name(settings)
    return live_version(settings, name), live_model_dir(settings, name)


def ranker_history_len(model_dir: Path | None, default: int) -> tuple[int, int]:
    """(history_len, tag_history_len) the ranker was trained with (its saved config)."""
    from tasks.model.ranker.model import load_ranker_config

    if model_dir is None:
        return default, 50
    try:
        params = load_ranker_config(model_dir)["ranker"]["params"]
        return int(params["history_len"]), int(params["tag_history_len"])
    except (OSError, KeyError, ValueError) as exc:
        log.warning("no ranker config under %s (%s); history_len %d", model_dir, exc, default)
        return default, 50


class LocalRanker:
    """The ranker's SavedModel in this process (embedded default)."""

    def __init__(self, model_dir: Path, *, version: int | None = None) -> None:
        from tasks.serving.local_model import LocalModel

        self.version = version
        self._model = LocalModel(model_dir, version=version, signatures=(RANK_SIGNATURE,))

    def rank(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        try:
            out = self._model.predict(RANK_SIGNATURE, inputs)
        except Exception as exc:
            raise RankerError(f"local ranker v{self.version} failed: {exc}") from exc
        return scores_from_outputs(out, len(np.asarray(inputs["user_id"])))


class RESTRanker:
    """``POST {url}/v1/models/{name}[/versions/{v}]:predict``, signature ``rank``, columnar.

    TF-Serving's REST answer for the columnar ``inputs`` format is ``{"outputs": ...}``: the
    bare value when the signature has one output (``rank`` has one, ``score``), else an object
    by output name; for the row format, ``{"predictions": [...]}`` (one value or object per
    row). :func:`scores_from_outputs` reads every form.
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        version: int | None = None,
        timeout: float = RANK_TIMEOUT_S,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"TF-Serving URL must be http(s)://host:port, got {base_url!r}")
        path = f"{base_url.rstrip('/')}/v1/models/{model_name}"
        self.url = (path if version is None else f"{path}/versions/{int(version)}") + ":predict"
        self.version = version
        self.timeout = timeout

    def rank(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        body = {"signature_name": RANK_SIGNATURE, "inputs": rest_inputs(inputs)}
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                answer = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise RankerError(f"{self.url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
            raise RankerError(f"{self.url}: {exc}") from exc
        return scores_from_outputs(answer, len(np.asarray(inputs["user_id"])))


def rest_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The columnar ``inputs`` object: each raw input as a (nested) JSON list."""
    out: dict[str, Any] = {}
    for name in RANK_INPUTS:
        value = np.asarray(inputs[name])
        out[name] = value.astype(str).tolist() if name == "tags" else value.tolist()
    return out


def scores_from_outputs(answer: Mapping[str, Any], n: int) -> np.ndarray:
    """float32[n] scores from a ranker answer in any of TF-Serving's forms (or in process).

    Accepted: ``{"score": [...]}`` (in process), ``{"outputs": [...]}`` / ``{"outputs":
    {"score": [...]}}`` (columnar) and ``{"predictions": [x, ...]}`` / ``{"predictions":
    [{"score": x}, ...]}`` (row). Raises ``RankerError`` on an error, a missing output, a
    wrong length, or values that are not finite probabilities.
    """
    if "error" in answer:
        raise RankerError(f"ranker answered an error: {str(answer['error'])[:300]}")
    if "score" in answer:
        raw: Any = answer["score"]
    elif "outputs" in answer:
        raw = answer["outputs"]
        raw = raw.get("score") if isinstance(raw, Mapping) else raw
    elif "predictions" in answer:
        rows = answer["predictions"]
        raw = [r.get("score") if isinstance(r, Mapping) else r for r in rows]
    else:
        raise RankerError(f"ranker answer has no score: {str(answer)[:200]}")
    try:
        scores = np.asarray(raw, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise RankerError(f"ranker scores are not numbers: {str(raw)[:200]}") from exc
    if scores.shape != (n,):
        raise RankerError(f"ranker returned {scores.shape[0]} scores for {n} candidates")
    if not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        raise RankerError(f"ranker scores are not probabilities: {scores[:5].tolist()}...")
    return scores


class GuardedRanker:
    """A ranker that, after a failure, is skipped for ``retry_after_s`` (fails fast)."""

    def __init__(self, inner: Ranker, *, retry_after_s: float = RETRY_AFTER_S) -> None:
        self.inner = inner
        self.version = inner.version
        self.retry_after_s = retry_after_s
        self._failed_at = -float("inf")

    def rank(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if time.monotonic() - self._failed_at < self.retry_after_s:
            raise RankerError(f"ranker failed less than {self.retry_after_s:g}s ago; skipped")
        try:
            return self.inner.rank(inputs)
        except Exception:
            self._failed_at = time.monotonic()
            raise


def open_ranker(
    settings: Settings, *, timeout: float = RANK_TIMEOUT_S
) -> tuple[Ranker | None, Path | None]:
    """The live ranker (REST when ``tfserving_url`` is set, else in process) and its dir.

    (None, None) when no ranker is deployed; raises when one is deployed but cannot load.
    """
    version, model_dir = live_ranker(settings)
    if version is None:
        return None, None
    if settings.tfserving_url:
        rest = RESTRanker(
            settings.tfserving_url, ranker_model_name(settings), version=version, timeout=timeout
        )
        return GuardedRanker(rest), model_dir
    if model_dir is None:
        return None, None
    return GuardedRanker(LocalRanker(model_dir, version=version)), model_dir


# -- candidate pools ------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidatePool:
    """A user's candidates in round-robin order, with each one's recall evidence."""

    user_id: int
    candidates: list[Candidate]
    evidence: RecallEvidence


def build_pool(
    user_id: int,
    channels: Sequence[tuple[str, Sequence[tuple[int, float]]]],
    size: int,
    *,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> CandidatePool:
    """Merge ``channels`` round-robin into up to ``size`` unseen candidates, with evidence.

    A candidate's evidence on a channel is the channel's score for it and its 1-based rank
    in that channel's list as the channel returned it (before excluding seen items).
    """
    candidates = merge_round_robin(channels, size, exclude=exclude)
    where = {c.illust_id: row for row, c in enumerate(candidates)}
    evidence = RecallEvidence.none(len(candidates))
    index = {name: c for c, name in enumerate(RECALL_CHANNELS)}
    for name, items in channels:
        col = index.get(name)
        if col is None:
            raise ValueError(f"unknown recall channel {name!r} (known: {RECALL_CHANNELS})")
        for rank, (item, score) in enumerate(items, start=1):
            row = where.get(int(item))
            if row is not None and evidence.rank[row, col] == 0:
                evidence.hit[row, col] = 1.0
                evidence.score[row, col] = float(score)
                evidence.rank[row, col] = rank
    return CandidatePool(int(user_id), candidates, evidence)


# -- features -------------------------------------------------------------------------------
class RankingFeatures:
    """The ranker's feature source for one live namespace: the training feature builder over
    the mirror as of the namespace's ``data_as_of`` (module docstring)."""

    def __init__(self, builder: Any, request_time: datetime, namespace: str | None = None) -> None:
        self.builder = builder
        self.request_time = request_time
        self.namespace = namespace

    @classmethod
    def from_mirror(
        cls,
        settings: Settings,
        data_as_of: datetime | str,
        *,
        history_len: int,
        tag_history_len: int = 50,
        namespace: str | None = None,
    ) -> RankingFeatures:
        """Read the mirror known at ``data_as_of + 1 s`` and build the feature builder."""
        from tasks.core.db import get_engine
        from tasks.model.ranker.features import RankingFeatureBuilder
        from tasks.model.ranker.rows import read_ranking_frames

        as_of = datetime.fromisoformat(data_as_of) if isinstance(data_as_of, str) else data_as_of
        request_time = as_of.replace(microsecond=0) + REQUEST_DELAY
        began = time.perf_counter()
        frames = read_ranking_frames(get_engine(settings.recsys_db_url), request_time)
        builder = RankingFeatureBuilder(
            frames.interactions,
            frames.illusts,
            frames.follows,
            history_len=history_len,
            tag_history_len=tag_history_len,
        )
        log.info(
            "ranking features for %s as of %s built in %.2fs",
            namespace,
            request_time,
            time.perf_counter() - began,
        )
        return cls(builder, request_time, namespace)

    def inputs(self, pool: CandidatePool) -> dict[str, np.ndarray]:
        """The raw ``rank`` inputs of every candidate of ``pool`` (training's feature code)."""
        n = len(pool.candidates)
        result: dict[str, np.ndarray] = self.builder.features(
            np.full(n, pool.user_id, np.int64),
            np.array([c.illust_id for c in pool.candidates], np.int64),
            np.full(n, np.datetime64(self.request_time, "s")),
            pool.evidence,
        )
        return result


# -- ranking --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankedPool:
    """A pool in its serving order: by the ranker's score when ``ranked``, else round robin.

    ``scores`` are the ranker's P(bookmark) aligned with ``candidates`` (None unless ranked);
    each ranked candidate's ``score`` is that probability. ``degraded`` names what failed.
    """

    candidates: list[Candidate]
    scores: np.ndarray | None
    ranked: bool
    degraded: tuple[str, ...] = ()


def rank_pool(
    pool: CandidatePool,
    *,
    ranker: Ranker | None,
    features: RankingFeatures | None,
    lock: threading.Lock | None = None,
) -> RankedPool:
    """One batched ranker call over ``pool``; round-robin order on any failure (module doc).

    ``features`` None with a ranker means the feature source failed (flagged
    ``ranker_features``); ``ranker`` None means no ranker is deployed (nothing flagged).
    ``lock`` serialises calls to an in-process ranker shared by threads, if needed.
    """
    unranked = RankedPool(list(pool.candidates), None, False)
    if ranker is None or not pool.candidates:
        return unranked
    if features is None:
        return dataclasses.replace(unranked, degraded=("ranker_features",))
    try:
        inputs = features.inputs(pool)
    except Exception as exc:
        log.warning("ranking features failed for user %s: %s", pool.user_id, exc, exc_info=True)
        return dataclasses.replace(unranked, degraded=("ranker_features",))
    try:
        if lock is None:
            scores = ranker.rank(inputs)
        else:
            with lock:
                scores = ranker.rank(inputs)
    except Exception as exc:
        log.warning("ranker failed for user %s: %s", pool.user_id, exc)
        return dataclasses.replace(unranked, degraded=("ranker",))
    order = np.argsort(-scores, kind="stable")
    ranked = [
        Candidate(pool.candidates[i].illust_id, float(scores[i]), pool.candidates[i].channel)
        for i in order
    ]
    return RankedPool(ranked, scores[order], True)
