"""Scoring a two-tower model on a holdout: the item catalogue and the towers as numpy callables.

Used by training (its own evaluation), the promotion gate (re-scoring registered versions) and
bench/quality.py. TensorFlow is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.model.evaluate import LeaveLastSplit, rank_metrics, ranks_of_test_items
from tasks.model.features import HISTORY_LEN, ITEM_FEATURES, BookmarkHistory

Tower = Callable[[dict[str, np.ndarray]], np.ndarray]


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


def tower_scores(
    split: LeaveLastSplit,
    catalogue: ItemCatalogue,
    user_tower: Tower,
    item_tower: Tower,
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
    users = split.user_ids[split.test_user_idx]
    hist = BookmarkHistory.from_frame(bookmarks).latest(users, history_len)
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
