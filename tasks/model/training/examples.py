"""Training examples: the samples table streamed from SQL, featurized, cached, batched.

The ``samples`` table is read with a server-side streaming query in chunks; each chunk is
turned into raw feature batches (item features gathered from the in-memory catalogue, user
history computed as of the example's time by :class:`~tasks.model.features.BookmarkHistory`)
and written to a local ``.npz`` cache, so the table never has to fit in memory and later
epochs do not query again.

History leakage: a positive's history is the user's bookmarks strictly before that bookmark's
time (so it never holds the target or anything later); a negative's history is as of the end
of the data interval (it is never in the user's bookmarks anyway). The evaluation holdout is
passed in as ``exclude_pairs`` and removed from the stream.

Item counts are point in time too: an example's ``total_bookmarks`` / ``total_view`` are
:class:`~tasks.model.features.ItemCounts` as of the same cutoff as its history, counted over
the split's train part (:func:`point_in_time_catalogue`), so neither later interactions nor
the holdout's reach a feature; the replica's live totals are never read as features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks.core.common import get_logger
from tasks.model.features import BookmarkHistory, ItemCounts, item_features_from_frame
from tasks.model.scoring import ItemCatalogue
from tasks.model.training.config import TrainParams

log = get_logger("train")


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


def point_in_time_catalogue(
    catalogue: ItemCatalogue, train_interactions: pd.DataFrame, as_of: datetime
) -> tuple[ItemCatalogue, ItemCounts, dict[str, np.ndarray]]:
    """Item counts over ``train_interactions`` (the split's train part: holdout rows never
    count); the catalogue with its count features as of ``as_of`` (the interval end, for the
    export check); and the columns to fit feature stats on.

    Those columns are the catalogue's, except the count features: the counts of every train
    bookmark's item as of that bookmark (its own second excluded), i.e. the point-in-time
    values the training examples carry, so the bucket boundaries cut what the model trains on.
    """
    counts = ItemCounts.from_frame(train_interactions)
    current = ItemCatalogue.from_features(counts.apply(catalogue.features, as_of))
    bookmarks = train_interactions[train_interactions["label"] == 1]
    cutoffs = pd.to_datetime(bookmarks["create_time"]).to_numpy().astype("datetime64[s]")
    at_examples = counts.as_of(bookmarks["illust_id"].to_numpy(np.int64), cutoffs)
    if not len(bookmarks):  # nothing to fit on: fall back to the counts as of ``as_of``
        at_examples = {name: current.features[name] for name in at_examples}
    return current, counts, {**current.features, **at_examples}


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
    item_counts: ItemCounts | None = None  # None: the catalogue's count columns as they are

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
        if self.item_counts is not None:  # as of the example's cutoff, like its history
            batch.update(self.item_counts.as_of(items, as_of))
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
