"""Scoring a two-tower model on a holdout: the item catalogue and the towers as numpy callables.

Used by training (its own evaluation), the promotion gate (re-scoring registered versions) and
bench/quality.py. TensorFlow is imported inside functions only.

Point in time: every feature of a holdout query comes from the split's train part (the
holdout's rows never count) before that query's cutoff, its test item's time: the user's
history (:class:`BookmarkHistory`) and the item counts (:class:`ItemCounts`, whatever count
columns the catalogue carries are replaced).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.model.evaluate import LeaveLastSplit, rank_metrics, ranks_of_test_items
from tasks.model.features import HISTORY_LEN, ITEM_FEATURES, BookmarkHistory, ItemCounts

Tower = Callable[[dict[str, np.ndarray]], np.ndarray]

# Item vectors are computed once per count snapshot: at most this many per scoring.
MAX_COUNT_SNAPSHOTS = 32


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


def count_snapshots(cutoffs: np.ndarray, max_snapshots: int = MAX_COUNT_SNAPSHOTS) -> np.ndarray:
    """Sorted datetime64[s] times at which item counts are taken for queries at ``cutoffs``.

    The distinct cutoffs themselves when there are at most ``max_snapshots``, else that many
    of them at evenly spaced ranks (the earliest always among them), so every query has a
    snapshot at or before its own cutoff and item counts never see past it.
    """
    if max_snapshots < 1:
        raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots}")
    times = np.sort(np.asarray(cutoffs).astype("datetime64[s]"))
    if not len(times):
        return times
    distinct = np.unique(times)
    if len(distinct) <= max_snapshots:
        return distinct
    return np.unique(times[np.linspace(0, len(times) - 1, max_snapshots).astype(np.int64)])


def tower_scores(
    split: LeaveLastSplit,
    catalogue: ItemCatalogue,
    user_tower: Tower,
    item_tower: Tower,
    *,
    history_len: int = HISTORY_LEN,
    batch_size: int = 256,
    max_snapshots: int = MAX_COUNT_SNAPSHOTS,
) -> dict[str, float]:
    """Rank metrics of a two-tower model on ``split``, every feature point in time.

    A query's history is its train bookmarks before its cutoff; its item counts are
    :class:`ItemCounts` over ``split.train`` as of the latest :func:`count_snapshots` time
    not after its cutoff (exact when there are at most ``max_snapshots`` distinct cutoffs),
    so the item tower runs ``max_snapshots`` x catalogue rows at most.
    """
    users = split.user_ids[split.test_user_idx]
    cutoffs = pd.to_datetime(np.asarray(split.test_time)).to_numpy().astype("datetime64[s]")
    bookmarks = split.train[split.train["label"] == 1]
    hist = BookmarkHistory.from_frame(bookmarks).histories(users, cutoffs, history_len)
    counts = ItemCounts.from_frame(split.train)
    snapshots = count_snapshots(cutoffs, max_snapshots)
    which = np.searchsorted(snapshots, cutoffs, side="right") - 1
    seen = split.seen_matrix()
    ranks = np.zeros(len(users), dtype=np.int64)
    for k, snapshot in enumerate(snapshots):
        members = np.flatnonzero(which == k)
        if not len(members):
            continue
        item_vecs = np.concatenate(
            [
                item_tower(
                    counts.apply(catalogue.gather(split.item_ids[s : s + batch_size]), snapshot)
                )
                for s in range(0, split.n_items, batch_size)
            ]
        )
        for s in range(0, len(members), batch_size):
            rows = members[s : s + batch_size]
            scores = user_tower({"user_id": users[rows], "history": hist[rows]}) @ item_vecs.T
            ranks[rows] = ranks_of_test_items(
                scores, seen[split.test_user_idx[rows]], split.test_item_idx[rows]
            )
    return rank_metrics(ranks)


def saved_model_towers(saved_model: Any) -> tuple[Tower, Tower]:
    """(user_tower, item_tower) numpy callables over a loaded SavedModel's signatures."""
    from tasks.model.two_tower import to_tensors

    def user(features: dict[str, np.ndarray]) -> np.ndarray:
        return saved_model.signatures["user_tower"](**to_tensors(features))["embedding"].numpy()

    def item(features: dict[str, np.ndarray]) -> np.ndarray:
        return saved_model.signatures["item_tower"](**to_tensors(features))["embedding"].numpy()

    return user, item


def keras_towers(model: Any) -> tuple[Tower, Tower]:
    """(user_tower, item_tower) numpy callables over an in-memory model."""
    from tasks.model.two_tower import to_tensors

    return (
        lambda f: model.user_embedding(to_tensors(f)).numpy(),
        lambda f: model.item_embedding(to_tensors(f)).numpy(),
    )
