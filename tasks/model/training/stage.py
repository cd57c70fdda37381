"""Train the two-tower model on the samples table, evaluate it, log everything to MLflow.

Input streams: the ``samples`` table is read with a server-side streaming query in chunks,
each chunk is turned into raw feature batches (item features gathered from the in-memory
catalogue, user history computed as of the example's time) and fed to ``tf.data`` through
``from_generator``; the table never has to fit in memory.

History leakage: a positive's history is the user's bookmarks strictly before that bookmark's
time (so it never holds the target or anything later); a negative's history is as of the end
of the data interval (it is never in the user's bookmarks anyway). The evaluation holdout
(each user's last bookmark, EVALUATION.md) is removed from the training stream so the model
and the baselines are scored on items none of them trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks.core.common import StageResult, check_interval, get_logger
from tasks.core.settings import Settings
from tasks.model.evaluate import (
    LeaveLastSplit,
    evaluate_baselines,
    leave_last_positive_split,
    rank_metrics,
    ranks_of_test_items,
)
from tasks.model.features import (
    HISTORY_LEN,
    ITEM_FEATURES,
    FeatureSpec,
    config_to_json,
    default_feature_config,
    fit_feature_stats,
    item_features_from_frame,
    validate_feature_config,
)

log = get_logger("train")

EXPERIMENT_NAME = "recsys4pix-two-tower"
LOSSES = ("pointwise", "inbatch_softmax")


def mlflow_metric_name(name: str) -> str:
    """MLflow metric keys cannot hold '@': ``HR@10`` is logged as ``HR_at_10``."""
    return name.replace("@", "_at_")


def metric_from_mlflow(name: str) -> str:
    return name.replace("_at_", "@")


class TrainingDataError(ValueError):
    """The samples table cannot train a model (empty, one class, unknown items...)."""


class NonFiniteLossError(ValueError):
    """Training produced a NaN/inf loss or prediction; nothing is exported or registered."""


@dataclass(frozen=True)
class TrainParams:
    """Training knobs. ``loss`` is ``pointwise`` (BCE, the write-up) or ``inbatch_softmax``."""

    loss: Literal["pointwise", "inbatch_softmax"] = "pointwise"
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 0.005
    dim: int = 32
    hidden: int = 64
    dropout: float = 0.1
    l2: float = 0.0
    history_len: int = HISTORY_LEN
    hash_bins: int = 10_000
    patience: int = 2
    val_share: float = 0.1
    chunk_rows: int = 8192
    seed: int = 42
    logq_correction: bool = True
    feature_config: tuple[FeatureSpec, ...] | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("epochs", "batch_size", "dim", "history_len", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 < self.val_share < 0.5:
            raise ValueError(f"val_share must be in (0, 0.5), got {self.val_share!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")

    def features(self) -> list[FeatureSpec]:
        if self.feature_config is not None:
            return list(self.feature_config)
        return default_feature_config(embedding_dim=self.dim, hash_bins=self.hash_bins)

    def as_mlflow_params(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "feature_config"}
        out["feature_config"] = "custom" if self.feature_config is not None else "default"
        return out

    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainResult(StageResult):
    run_id: str
    export_dir: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    n_train: int
    n_val: int
    epochs_run: int
    interval_start: datetime
    interval_end: datetime
    reused: bool = False


# ---------------------------------------------------------------- in-memory lookups


@dataclass
class ItemCatalogue:
    """Raw item features by illust_id (sorted), gathered per batch."""

    ids: np.ndarray
    features: dict[str, np.ndarray]

    @classmethod
    def from_features(cls, features: Mapping[str, np.ndarray]) -> ItemCatalogue:
        order = np.argsort(features["illust_id"], kind="stable")
        return cls(
            ids=np.asarray(features["illust_id"])[order],
            features={k: np.asarray(v)[order] for k, v in features.items()},
        )

    def gather(self, illust_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Features for ``illust_ids``; unknown ids keep their id and get 0 / "" elsewhere."""
        ids = np.asarray(illust_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, ids), 0, max(len(self.ids) - 1, 0))
        known = (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        out: dict[str, np.ndarray] = {}
        for name in ITEM_FEATURES:
            if name == "illust_id":
                out[name] = ids
            elif name == "tags":
                out[name] = np.where(known, self.features[name][pos] if len(self.ids) else "", "")
            else:
                col = self.features[name][pos] if len(self.ids) else np.zeros(len(ids), np.int64)
                out[name] = np.where(known, col, 0).astype(np.int64)
        return out


@dataclass
class BookmarkHistory:
    """Each user's bookmarks sorted by (time, illust_id), to cut histories as of any time.

    Times are whole seconds (the DATETIME resolution): a history as of ``t`` holds bookmarks
    of seconds strictly before ``t``'s second, so a target never sees itself nor anything
    bookmarked in the same second. Lookups are vectorised through one sorted key
    ``user_row * span + second``.
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    seconds: np.ndarray
    items: np.ndarray
    keys: np.ndarray
    base: int
    span: int

    @classmethod
    def from_frame(cls, bookmarks: pd.DataFrame) -> BookmarkHistory:
        frame = bookmarks.sort_values(["user_id", "create_time", "illust_id"], kind="mergesort")
        users = frame["user_id"].to_numpy(np.int64)
        user_ids, starts, counts = np.unique(users, return_index=True, return_counts=True)
        seconds = (
            frame["create_time"].to_numpy().astype("datetime64[s]").astype(np.int64)
            if len(frame)
            else np.zeros(0, np.int64)
        )
        base = int(seconds.min()) if len(seconds) else 0
        span = int(seconds.max()) - base + 2 if len(seconds) else 1
        if len(user_ids) * span >= 2**62:
            raise ValueError(f"history key overflow: {len(user_ids)} users x {span} s")
        rows = np.repeat(np.arange(len(user_ids), dtype=np.int64), counts)
        return cls(
            user_ids=user_ids,
            offsets=np.append(starts, len(users)).astype(np.int64),
            seconds=seconds,
            items=frame["illust_id"].to_numpy(np.int64),
            keys=rows * span + (seconds - base),
            base=base,
            span=span,
        )

    def histories(self, user_ids: np.ndarray, as_of: np.ndarray, length: int) -> np.ndarray:
        """int64[B, length]: bookmarks strictly before ``as_of`` (datetime64 or epoch µs),
        newest first, 0-padded."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        out = np.zeros((len(user_ids), length), dtype=np.int64)
        if not len(self.user_ids) or not len(user_ids):
            return out
        as_of = np.asarray(as_of)
        if np.issubdtype(as_of.dtype, np.datetime64):
            as_of_s = as_of.astype("datetime64[s]").astype(np.int64)
        else:
            as_of_s = np.floor_divide(as_of.astype(np.int64), 1_000_000)
        rows = np.clip(np.searchsorted(self.user_ids, user_ids), 0, len(self.user_ids) - 1)
        known = self.user_ids[rows] == user_ids
        offset = np.clip(as_of_s - self.base, 0, self.span - 1)
        cut = np.searchsorted(self.keys, rows * self.span + offset, side="left")
        lo = self.offsets[rows]
        index = cut[:, None] - 1 - np.arange(length)[None, :]
        valid = known[:, None] & (index >= lo[:, None])
        out[valid] = self.items[index[valid]]
        return out


# ---------------------------------------------------------------- streaming input


def _val_mask(user_ids: np.ndarray, item_ids: np.ndarray, share: float) -> np.ndarray:
    """Deterministic validation membership by a hash of the (user, item) pair."""
    mixed = (user_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ item_ids.astype(
        np.uint64
    )
    mixed = (mixed * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(40)
    return (mixed % np.uint64(10_000)).astype(np.float64) < share * 10_000


def _pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One int64 per (user, item) pair, for vectorised membership tests."""
    return users.astype(np.int64) * np.int64(1 << 32) + items.astype(np.int64)


def samples_query(interval_end: datetime) -> sa.Select:
    """Samples known by the end of the interval, each positive with its (first) bookmark time.

    The first time: a re-bookmarked item must not sit in the history of its own example.
    """
    from tasks.core.schema import mirror_interactions as mi
    from tasks.core.schema import samples

    bookmark_time = (
        sa.select(mi.c.user_id, mi.c.illust_id, sa.func.min(mi.c.create_time).label("event_time"))
        .where(mi.c.label == 1, mi.c.create_time < interval_end)
        .group_by(mi.c.user_id, mi.c.illust_id)
        .subquery("bookmark_time")
    )
    return (
        sa.select(
            samples.c.user_id,
            samples.c.illust_id,
            samples.c.label,
            bookmark_time.c.event_time,
        )
        .select_from(
            samples.outerjoin(
                bookmark_time,
                sa.and_(
                    bookmark_time.c.user_id == samples.c.user_id,
                    bookmark_time.c.illust_id == samples.c.illust_id,
                ),
            )
        )
        .where(samples.c.interval_end <= interval_end)
        .order_by(samples.c.user_id, samples.c.illust_id)
    )


@dataclass
class SampleStream:
    """Chunks of the samples table -> shuffled batches of raw features + label."""

    engine: sa.Engine
    interval_end: datetime
    catalogue: ItemCatalogue
    history: BookmarkHistory
    params: TrainParams
    exclude_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    logq_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    logq_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        pairs = np.asarray(self.exclude_pairs, dtype=np.int64).reshape(-1, 2)
        self._excluded = np.sort(_pair_keys(pairs[:, 0], pairs[:, 1]))

    def chunks(self) -> Iterator[pd.DataFrame]:
        with self.engine.connect() as conn:
            result = conn.execution_options(
                stream_results=True, yield_per=self.params.chunk_rows
            ).execute(samples_query(self.interval_end))
            for n, rows in enumerate(result.partitions(self.params.chunk_rows)):
                frame = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "event_time"])
                if n % 50 == 0:
                    log.info("samples stream: chunk %d (%d rows)", n, len(frame))
                yield frame

    def featurize(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        users = frame["user_id"].to_numpy(np.int64)
        items = frame["illust_id"].to_numpy(np.int64)
        end_us = np.datetime64(self.interval_end, "us").astype(np.int64)
        event = pd.to_datetime(frame["event_time"]).to_numpy().astype("datetime64[us]")
        as_of = np.where(np.isnat(event), end_us, event.astype(np.int64))
        batch = self.catalogue.gather(items)
        batch["tags"] = batch["tags"].astype(str)  # once per chunk, not per batch
        batch["user_id"] = users
        batch["history"] = self.history.histories(users, as_of, self.params.history_len)
        batch["label"] = frame["label"].to_numpy(np.float32)
        batch["logq"] = np.zeros(len(items), np.float32)
        if len(self.logq_ids):
            pos = np.clip(np.searchsorted(self.logq_ids, items), 0, len(self.logq_ids) - 1)
            hit = self.logq_ids[pos] == items
            batch["logq"][hit] = self.logq_values[pos[hit]]
        return batch

    def featurized_chunks(self) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        """One pass over the table: each chunk filtered, featurized and split train/val."""
        pointwise = self.params.loss == "pointwise"
        for frame in self.chunks():
            users = frame["user_id"].to_numpy(np.int64)
            items = frame["illust_id"].to_numpy(np.int64)
            keep = np.ones(len(frame), dtype=bool)
            if len(self._excluded):
                keep &= ~np.isin(_pair_keys(users, items), self._excluded)
            if not pointwise:
                keep &= frame["label"].to_numpy() == 1
            is_val = _val_mask(users, items, self.params.val_share)
            out: dict[str, dict[str, np.ndarray]] = {}
            for split, mask in (("train", keep & ~is_val), ("val", keep & is_val)):
                if mask.any():
                    out[split] = self.featurize(frame[mask])
            yield out

    def _cached_chunks(
        self, split: str, rng: np.random.Generator
    ) -> Iterator[dict[str, np.ndarray]]:
        """Chunks of one split: from the local cache when a full pass wrote it, else streamed
        from the database (writing the cache for both splits on the way)."""
        cache = self.cache_dir
        if cache is not None and (cache / "complete").exists():
            files = sorted(cache.glob(f"{split}-*.npz"))
            for index in rng.permutation(len(files)):
                with np.load(files[index]) as data:
                    yield {k: data[k] for k in data.files}
            return
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        for n, parts in enumerate(self.featurized_chunks()):
            if cache is not None:
                for name, part in parts.items():
                    np.savez(cache / f"{name}-{n:06d}.npz", **part)
            if split in parts:
                yield parts[split]
        if cache is not None:
            (cache / "complete").touch()
            log.info("samples cache complete at %s", cache)

    def batches(
        self, split: Literal["train", "val"], epoch: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """Shuffled batches of one split.

        The first pass streams the table (rows ordered by (user, illust), ``chunk_rows`` at a
        time) and, with ``cache_dir`` set, writes each featurized chunk to a local ``.npz``
        file; later epochs read those files in a per-epoch random order instead of querying
        again. Each chunk is permuted with a per-epoch seed; leftovers carry into the next
        chunk, so every batch but the last is full. Never more than a chunk in memory.
        """
        rng = np.random.default_rng([self.params.seed, epoch])
        carry: dict[str, np.ndarray] | None = None
        for chunk in self._cached_chunks(split, rng):
            order = rng.permutation(len(chunk["label"]))
            batch = {k: v[order] for k, v in chunk.items()}
            if carry is not None:
                batch = {k: np.concatenate([carry[k], batch[k]]) for k in batch}
            size = self.params.batch_size
            full = len(batch["label"]) // size * size
            for start in range(0, full, size):
                yield {k: v[start : start + size] for k, v in batch.items()}
            carry = {k: v[full:] for k, v in batch.items()} if full < len(batch["label"]) else None
        if carry is not None and len(carry["label"]):
            yield carry


def output_signature() -> dict[str, Any]:
    import tensorflow as tf

    spec: dict[str, Any] = {
        name: tf.TensorSpec([None], tf.string if name == "tags" else tf.int64)
        for name in ITEM_FEATURES
    }
    spec["user_id"] = tf.TensorSpec([None], tf.int64)
    spec["history"] = tf.TensorSpec([None, None], tf.int64)
    spec["label"] = tf.TensorSpec([None], tf.float32)
    spec["logq"] = tf.TensorSpec([None], tf.float32)
    return spec


def dataset_from_batches(make_batches: Callable[[], Iterator[dict[str, np.ndarray]]]) -> Any:
    """A ``tf.data`` pipeline over a batch generator, prefetching one batch ahead."""
    import tensorflow as tf

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for batch in make_batches():
            if batch["tags"].dtype == object:
                batch = {**batch, "tags": batch["tags"].astype(str)}
            yield batch

    dataset = tf.data.Dataset.from_generator(gen, output_signature=output_signature())
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- training loop


def _loss_fn(model: Any, loss: str) -> Callable[[Mapping[str, Any], bool], Any]:
    import tensorflow as tf

    def pointwise(batch: Mapping[str, Any], training: bool) -> Any:
        logits = model(batch, training=training)
        return tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=batch["label"], logits=logits)
        )

    def inbatch_softmax(batch: Mapping[str, Any], training: bool) -> Any:
        users = model.user_embedding(batch, training=training)
        items = model.item_embedding(batch, training=training)
        logits = model.logit_scale * tf.matmul(users, items, transpose_b=True)
        logits -= batch["logq"][None, :]  # logQ correction: popular items are over-sampled
        ids = batch["illust_id"]
        same = tf.equal(ids[:, None], ids[None, :])
        eye = tf.eye(tf.shape(ids)[0], dtype=tf.bool)
        logits = tf.where(same & ~eye, tf.constant(-1e9, logits.dtype), logits)
        labels = tf.range(tf.shape(ids)[0])
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )

    return pointwise if loss == "pointwise" else inbatch_softmax


@dataclass
class FitHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    examples_per_s: list[float] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    best_epoch: int = 0


def fit_model(
    model: Any,
    train_data: Callable[[int], Any],
    val_data: Callable[[int], Any] | None,
    params: TrainParams,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitHistory:
    """Adam with early stopping on validation loss; best weights restored at the end.

    ``train_data(epoch)`` / ``val_data(epoch)`` return iterables of feature batches (a
    ``tf.data.Dataset`` or anything yielding dicts of tensors).
    """
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(learning_rate=params.learning_rate)
    compute_loss = _loss_fn(model, params.loss)

    @tf.function(reduce_retracing=True)
    def train_step(batch: Mapping[str, Any]) -> Any:
        with tf.GradientTape() as tape:
            loss = compute_loss(batch, True)
            reg = tf.add_n(model.losses) if model.losses else 0.0
            total = loss + reg
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, model.trainable_variables, strict=True) if g is not None]
        )
        return loss

    @tf.function(reduce_retracing=True)
    def eval_step(batch: Mapping[str, Any]) -> Any:
        return compute_loss(batch, False)

    history = FitHistory()
    best = (np.inf, None)
    waited = 0
    for epoch in range(params.epochs):
        started, total, count, seen = time.perf_counter(), 0.0, 0, 0
        for step, batch in enumerate(train_data(epoch)):
            loss = float(train_step(batch))
            if not np.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became {loss} at epoch {epoch} step {step}"
                )
            size = int(batch["label"].shape[0])
            total, count, seen = total + loss * size, count + size, seen + size
            if step % 200 == 0:
                log.info("epoch %d step %d loss %.4f", epoch, step, loss)
        if count == 0:
            raise TrainingDataError("the training split produced no batches")
        history.n_train = count
        history.train_loss.append(total / count)
        history.examples_per_s.append(seen / max(time.perf_counter() - started, 1e-9))
        val_loss = float("nan")
        if val_data is not None:
            vtotal, vcount = 0.0, 0
            for batch in val_data(epoch):
                size = int(batch["label"].shape[0])
                vtotal += float(eval_step(batch)) * size
                vcount += size
            history.n_val = vcount
            val_loss = vtotal / vcount if vcount else float("nan")
        history.val_loss.append(val_loss)
        metrics = {
            "train_loss": history.train_loss[-1],
            "val_loss": val_loss,
            "examples_per_s": history.examples_per_s[-1],
        }
        log.info("epoch %d: %s", epoch, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        monitored = val_loss if np.isfinite(val_loss) else history.train_loss[-1]
        if monitored < best[0] - 1e-6:
            best, waited = (monitored, [w.numpy() for w in model.weights]), 0
            history.best_epoch = epoch
        else:
            waited += 1
            if waited >= params.patience:
                log.info("early stop after epoch %d (best epoch %d)", epoch, history.best_epoch)
                break
    if best[1] is not None:
        for var, value in zip(model.weights, best[1], strict=True):
            var.assign(value)
    return history


# ---------------------------------------------------------------- evaluation with towers


def tower_scores(
    split: LeaveLastSplit,
    catalogue: ItemCatalogue,
    user_tower: Callable[[dict[str, np.ndarray]], np.ndarray],
    item_tower: Callable[[dict[str, np.ndarray]], np.ndarray],
    *,
    history_len: int = HISTORY_LEN,
    batch_size: int = 256,
) -> dict[str, float]:
    """Rank metrics of a two-tower model on ``split``: history = the user's train bookmarks."""
    item_vecs = np.concatenate(
        [
            item_tower(catalogue.gather(split.item_ids[s : s + batch_size]))
            for s in range(0, split.n_items, batch_size)
        ]
    )
    bookmarks = split.train[split.train["label"] == 1]
    history = BookmarkHistory.from_frame(bookmarks)
    users = split.user_ids[split.test_user_idx]
    as_of = np.full(len(users), np.iinfo(np.int64).max)
    hist = history.histories(users, as_of, history_len)
    seen = split.seen_matrix()
    ranks = []
    for s in range(0, len(users), batch_size):
        user_vecs = user_tower(
            {"user_id": users[s : s + batch_size], "history": hist[s : s + batch_size]}
        )
        scores = user_vecs @ item_vecs.T
        rows = split.test_user_idx[s : s + batch_size]
        ranks.append(
            ranks_of_test_items(scores, seen[rows], split.test_item_idx[s : s + batch_size])
        )
    return rank_metrics(np.concatenate(ranks))


def saved_model_towers(
    saved_model: Any,
) -> tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]:
    """(user_tower, item_tower) numpy callables over a loaded SavedModel's signatures."""
    from tasks.model.two_tower import to_tensors

    def user(features: dict[str, np.ndarray]) -> np.ndarray:
        return saved_model.signatures["user_tower"](**to_tensors(features))["embedding"].numpy()

    def item(features: dict[str, np.ndarray]) -> np.ndarray:
        return saved_model.signatures["item_tower"](**to_tensors(features))["embedding"].numpy()

    return user, item


def keras_towers(model: Any) -> tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]:
    """(user_tower, item_tower) numpy callables over an in-memory model."""
    from tasks.model.two_tower import to_tensors

    return (
        lambda f: model.user_embedding(to_tensors(f)).numpy(),
        lambda f: model.item_embedding(to_tensors(f)).numpy(),
    )


# ---------------------------------------------------------------- the stage


def read_training_inputs(
    engine: sa.Engine, interval_end: datetime
) -> tuple[ItemCatalogue, pd.DataFrame, dict[str, int]]:
    """Catalogue, interactions before ``interval_end`` and samples counts by label."""
    from tasks.core.schema import mirror_illusts, mirror_interactions, samples

    with engine.connect() as conn:
        illusts = pd.read_sql(sa.select(mirror_illusts), conn)
        interactions = pd.read_sql(
            sa.select(
                mirror_interactions.c.user_id,
                mirror_interactions.c.illust_id,
                mirror_interactions.c.label,
                mirror_interactions.c.create_time,
            ).where(mirror_interactions.c.create_time < interval_end),
            conn,
        )
        counts = dict(
            conn.execute(
                sa.select(samples.c.label, sa.func.count())
                .where(samples.c.interval_end <= interval_end)
                .group_by(samples.c.label)
            ).all()
        )
    catalogue = ItemCatalogue.from_features(item_features_from_frame(illusts))
    by_label = {"negatives": int(counts.get(0, 0)), "positives": int(counts.get(1, 0))}
    log.info(
        "read %d illusts, %d interactions before %s, samples %s",
        len(illusts),
        len(interactions),
        interval_end,
        by_label,
    )
    return catalogue, interactions, by_label


def _experiment_id(settings: Settings) -> str:
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(
        EXPERIMENT_NAME, artifact_location=settings.mlflow_artifact_root
    )


def _reusable_run(settings: Settings, tags: Mapping[str, str]) -> Any | None:
    """A finished run with the same data interval and params (idempotent re-run)."""
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [_experiment_id(settings)], filter_string=query + " and attributes.status = 'FINISHED'"
    )
    return runs[0] if runs else None


def train_two_tower(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    *,
    params: TrainParams | None = None,
) -> TrainResult:
    """Train on samples known by ``interval_end``, evaluate vs baselines, log to MLflow.

    Idempotent: a finished run for the same interval and params is returned as is.
    """
    import mlflow

    params = params or TrainParams()
    start, end = check_interval(interval_start, interval_end)
    config = params.features()
    validate_feature_config(config)
    tags = {
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
        "params_fingerprint": params.fingerprint(),
    }
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    previous = _reusable_run(settings, tags)
    if previous is not None:
        log.info("reusing finished run %s for %s", previous.info.run_id, tags)
        return _result_from_run(previous, start, end)

    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="train-cache-", dir=settings.artifacts_dir))
    try:
        return _train(settings, start, end, params, config, tags, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _train(
    settings: Settings,
    start: datetime,
    end: datetime,
    params: TrainParams,
    config: list[FeatureSpec],
    tags: dict[str, str],
    cache_dir: Path,
) -> TrainResult:
    """The body of :func:`train_two_tower`; ``cache_dir`` holds the featurized samples."""
    import keras
    import mlflow

    from tasks.core.db import get_engine
    from tasks.model.two_tower import ModelParams, build_two_tower, export_saved_model

    engine = get_engine(settings.recsys_db_url)
    catalogue, interactions, counts = read_training_inputs(engine, end)
    if counts["positives"] == 0 or counts["negatives"] == 0 and params.loss == "pointwise":
        raise TrainingDataError(
            f"samples before {end} must hold both classes for {params.loss!r}, got {counts}"
        )
    if interactions.empty:
        raise TrainingDataError(f"no mirror_interactions before {end}: nothing to evaluate on")
    split = leave_last_positive_split(interactions, item_ids=catalogue.ids)
    holdout = np.stack(
        [split.user_ids[split.test_user_idx], split.item_ids[split.test_item_idx]], axis=1
    )
    item_columns = {k: v for k, v in catalogue.features.items()}
    stats = fit_feature_stats(config, item_columns)
    # Histories and logQ from the split's train part: the holdout items never leak into
    # a training history (not even a negative's, which is cut at the interval end).
    bookmarks = split.train[split.train["label"] == 1]
    pop = bookmarks.groupby("illust_id").size()
    pop = pop if params.logq_correction else pop.iloc[:0]
    stream = SampleStream(
        engine=engine,
        interval_end=end,
        catalogue=catalogue,
        history=BookmarkHistory.from_frame(bookmarks),
        params=params,
        exclude_pairs=holdout,
        logq_ids=pop.index.to_numpy(np.int64),
        logq_values=np.log(pop.to_numpy() / max(pop.sum(), 1)).astype(np.float32),
        cache_dir=cache_dir / "samples",
    )

    keras.utils.set_random_seed(params.seed)
    model = build_two_tower(
        config,
        stats,
        ModelParams(dim=params.dim, hidden=params.hidden, dropout=params.dropout, l2=params.l2),
    )
    experiment_id = _experiment_id(settings)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(params.as_mlflow_params())
        mlflow.log_params(
            {"samples_positives": counts["positives"], "samples_negatives": counts["negatives"]}
        )
        mlflow.log_text(config_to_json(config, stats), "feature_config.json")

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=epoch)

        fit = fit_model(
            model,
            lambda epoch: dataset_from_batches(lambda: stream.batches("train", epoch)),
            lambda epoch: dataset_from_batches(lambda: stream.batches("val", 0)),
            params,
            on_epoch=on_epoch,
        )
        _log_curves(fit)
        user_fn, item_fn = keras_towers(model)
        metrics = (
            tower_scores(split, catalogue, user_fn, item_fn, history_len=params.history_len)
            if len(split.test_user_idx)
            else {}
        )
        if any(not np.isfinite(v) for v in metrics.values()):
            raise NonFiniteLossError(f"evaluation produced non-finite metrics {metrics}")
        baselines = evaluate_baselines(split) if len(split.test_user_idx) else {}
        mlflow.log_metrics({mlflow_metric_name(k): v for k, v in metrics.items()})
        for name, values in baselines.items():
            mlflow.log_metrics({f"{name}.{mlflow_metric_name(k)}": v for k, v in values.items()})
        mlflow.log_metrics(
            {
                "n_train": fit.n_train,
                "n_val": fit.n_val,
                "n_test_users": len(split.test_user_idx),
                "epochs_run": len(fit.train_loss),
                "best_epoch": fit.best_epoch,
            }
        )
        export_root = settings.artifacts_dir / "exports"
        export_root.mkdir(parents=True, exist_ok=True)
        export_dir = export_root / f"{end:%Y%m%dT%H%M%S}-{run_id}"
        export_saved_model(model, export_dir, history_len=params.history_len)
        _check_export(export_dir, catalogue, params.history_len)
        mlflow.log_artifacts(str(export_dir), "saved_model")
        _log_pyfunc(export_dir, catalogue, params.history_len)
    result = TrainResult(
        run_id=run_id,
        export_dir=str(export_dir),
        metrics=metrics,
        baselines=baselines,
        n_train=fit.n_train,
        n_val=fit.n_val,
        epochs_run=len(fit.train_loss),
        interval_start=start,
        interval_end=end,
    )
    log.info(
        "trained run %s: %s (baselines %s), exported %s", run_id, metrics, baselines, export_dir
    )
    return result


def _result_from_run(run: Any, start: datetime, end: datetime) -> TrainResult:
    data = {metric_from_mlflow(k): v for k, v in run.data.metrics.items()}
    metrics = {k: v for k, v in data.items() if k.startswith(("HR@", "NDCG@"))}
    baselines: dict[str, dict[str, float]] = {}
    for key, value in data.items():
        if "." in key:
            name, metric = key.split(".", 1)
            baselines.setdefault(name, {})[metric] = value
    export = run.data.tags.get("export_dir", "")
    return TrainResult(
        run_id=run.info.run_id,
        export_dir=export,
        metrics=metrics,
        baselines=baselines,
        n_train=int(data.get("n_train", 0)),
        n_val=int(data.get("n_val", 0)),
        epochs_run=int(data.get("epochs_run", 0)),
        interval_start=start,
        interval_end=end,
        reused=True,
    )


def _check_export(export_dir: Path, catalogue: ItemCatalogue, history_len: int) -> None:
    """Reload the export and make sure it scores a few real items with finite values."""
    import tensorflow as tf

    from tasks.model.two_tower import to_tensors

    loaded = tf.saved_model.load(str(export_dir))
    items = catalogue.gather(catalogue.ids[:8])
    users = {
        "user_id": np.arange(1, len(items["illust_id"]) + 1, dtype=np.int64),
        "history": np.zeros((len(items["illust_id"]), history_len), np.int64),
    }
    score = loaded.signatures["score"](**to_tensors({**users, **items}))["score"].numpy()
    if not np.all(np.isfinite(score)):
        raise NonFiniteLossError(f"exported model gives non-finite scores {score}")


def _log_curves(fit: FitHistory) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    figure, axis = plt.subplots(figsize=(5, 3.5))
    epochs = np.arange(len(fit.train_loss))
    axis.plot(epochs, fit.train_loss, marker="o", label="train loss")
    axis.plot(epochs, fit.val_loss, marker="o", label="validation loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    mlflow.log_figure(figure, "learning_curves.png")
    plt.close(figure)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "tensorflow", "numpy", "pandas")]


def _log_pyfunc(export_dir: Path, catalogue: ItemCatalogue, history_len: int) -> None:
    """Log an MLflow pyfunc that scores (user, item) rows with the SavedModel artifact."""
    import mlflow

    from tasks.model.pyfunc import example_frame, make_pyfunc_model

    example = example_frame(catalogue.gather(catalogue.ids[:2]), history_len=history_len)
    mlflow.pyfunc.log_model(
        name="model",
        python_model=make_pyfunc_model(history_len),
        artifacts={"saved_model": str(export_dir)},
        input_example=example,
        # Declared rather than inferred: inference re-imports the model in a subprocess.
        pip_requirements=_pip_requirements(),
    )
    mlflow.set_tag("export_dir", str(export_dir))
