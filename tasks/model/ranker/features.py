"""Point-in-time ranking features for (user, illust, request_time) rows.

The raw inputs of the ranker's ``rank`` signature (:data:`RANK_INPUTS`), computed from the
recsys DB mirror frames (interactions, illusts, follows) as of each row's request time:

* user: ``user_id``, ``history`` (the user's bookmarks before the request, newest first, by
  :class:`~tasks.model.features.BookmarkHistory`: the one history builder), ``user_bookmarks``
  and ``user_views`` (counts of label-1 / label-0 interactions before the request);
* item: the two-tower item tower's raw features (:data:`~tasks.model.features.ITEM_FEATURES`);
* cross: ``artist_followed`` (a follow of the item's artist created before the request),
  ``artist_history`` (the user's bookmarks of that artist before the request),
  ``tag_overlap`` (how many of the item's tags occur among the tags of the user's last
  ``tag_history_len`` bookmarks before the request), ``item_age_s`` (request time minus the
  item's create_time in seconds; -1 when unknown or negative);
* recall evidence per channel of :data:`RECALL_CHANNELS`: ``channel_hit`` (multi-hot),
  ``channel_score`` and ``channel_rank`` (1-based, 0 = the channel did not return it).
  Training rows carry no evidence (all zeros, i.e. "none") unless it is given.

Point in time: every event counts only if its whole second is strictly before the request's
second (the rule of BookmarkHistory), so nothing at or after a row's time reaches a feature.
A follow without a create_time is treated as unknown and never counts. The item's static
attributes (``total_bookmarks``, ``total_view``, ...) are the mirror's snapshot, as for the
two-tower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.model.features import (
    HISTORY_LEN,
    ITEM_FEATURES,
    TAG_SEPARATOR,
    BookmarkHistory,
    item_features_from_frame,
)
from tasks.model.scoring import ItemCatalogue

# The API's recall channel names (api/app.py, tasks/serving/recall.py; tasks.model may not
# import tasks.serving, so they are spelled out here and checked by a unit test).
RECALL_CHANNELS: tuple[str, ...] = ("ann", "i2i", "follow_new", "hot")
USER_COUNT_FEATURES: tuple[str, ...] = ("user_bookmarks", "user_views")
CROSS_FEATURES: tuple[str, ...] = ("artist_followed", "artist_history", "tag_overlap", "item_age_s")
EVIDENCE_FEATURES: tuple[str, ...] = ("channel_hit", "channel_score", "channel_rank")
RANK_INPUTS: tuple[str, ...] = (
    "user_id",
    "history",
    *USER_COUNT_FEATURES,
    *ITEM_FEATURES,
    *CROSS_FEATURES,
    *EVIDENCE_FEATURES,
)
UNKNOWN_AGE = -1


@dataclass(frozen=True)
class RecallEvidence:
    """Per candidate and channel: returned?, the channel's score, its 1-based rank (0 = not)."""

    hit: np.ndarray  # float32[B, C]
    score: np.ndarray  # float32[B, C]
    rank: np.ndarray  # int64[B, C]

    @classmethod
    def none(cls, n: int) -> RecallEvidence:
        """No evidence (training rows): every channel absent."""
        c = len(RECALL_CHANNELS)
        return cls(
            np.zeros((n, c), np.float32), np.zeros((n, c), np.float32), np.zeros((n, c), np.int64)
        )

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, tuple[float, int]]]) -> RecallEvidence:
        """From one ``{channel: (score, 1-based rank)}`` mapping per candidate."""
        out = cls.none(len(rows))
        index = {name: c for c, name in enumerate(RECALL_CHANNELS)}
        for row, channels in enumerate(rows):
            for name, (score, rank) in channels.items():
                if name not in index:
                    raise ValueError(f"unknown recall channel {name!r} (known: {RECALL_CHANNELS})")
                if rank < 1:
                    raise ValueError(f"channel ranks are 1-based, got {rank} for {name!r}")
                c = index[name]
                out.hit[row, c] = 1.0
                out.score[row, c] = float(score)
                out.rank[row, c] = int(rank)
        return out

    def as_features(self) -> dict[str, np.ndarray]:
        return {"channel_hit": self.hit, "channel_score": self.score, "channel_rank": self.rank}


def to_seconds(times: Any) -> np.ndarray:
    """Datetimes (anything ``pd.to_datetime`` takes) -> int64 epoch seconds, floored."""
    values = pd.to_datetime(
        pd.Series(np.asarray(times)) if not isinstance(times, pd.Series) else times
    )
    out = values.to_numpy().astype("datetime64[s]").astype(np.int64)
    return np.where(values.isna().to_numpy(), np.iinfo(np.int64).min, out)


@dataclass
class EventCounter:
    """How many events of a group happened in whole seconds strictly before a time.

    Groups are int64 keys (a user, a (user, artist) pair); lookups are vectorised through one
    sorted key ``group_row * span + second`` as in BookmarkHistory.
    """

    groups: np.ndarray
    offsets: np.ndarray
    keys: np.ndarray
    base: int
    span: int

    @classmethod
    def build(cls, groups: np.ndarray, seconds: np.ndarray) -> EventCounter:
        groups = np.asarray(groups, np.int64)
        seconds = np.asarray(seconds, np.int64)
        order = np.lexsort((seconds, groups))
        groups, seconds = groups[order], seconds[order]
        unique, starts, counts = np.unique(groups, return_index=True, return_counts=True)
        base = int(seconds.min()) if len(seconds) else 0
        span = int(seconds.max()) - base + 2 if len(seconds) else 1
        if len(unique) * span >= 2**62:
            raise ValueError(f"event key overflow: {len(unique)} groups x {span} s")
        rows = np.repeat(np.arange(len(unique), dtype=np.int64), counts)
        return cls(
            groups=unique,
            offsets=np.append(starts, len(groups)).astype(np.int64),
            keys=rows * span + (seconds - base),
            base=base,
            span=span,
        )

    def before(self, groups: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """int64[B]: events of each query's group in seconds strictly before its second."""
        groups = np.asarray(groups, np.int64)
        out = np.zeros(len(groups), np.int64)
        if not len(self.groups) or not len(groups):
            return out
        rows = np.clip(np.searchsorted(self.groups, groups), 0, len(self.groups) - 1)
        known = self.groups[rows] == groups
        offset = np.clip(np.asarray(seconds, np.int64) - self.base, 0, self.span - 1)
        cut = np.searchsorted(self.keys, rows * self.span + offset, side="left")
        out[known] = (cut - self.offsets[rows])[known]
        return out


def pair_key(users: np.ndarray, others: np.ndarray) -> np.ndarray:
    """One int64 per (user, other id) pair."""
    return np.asarray(users, np.int64) * np.int64(1 << 32) + np.asarray(others, np.int64)


class RankingFeatureBuilder:
    """Raw ``rank`` inputs for (user, illust, request_time) rows, point in time.

    Built once from the mirror frames (interactions: user_id, illust_id, label, create_time;
    illusts: business schema; follows: user_id, artist_id, create_time) and queried per batch.
    """

    def __init__(
        self,
        interactions: pd.DataFrame,
        illusts: pd.DataFrame,
        follows: pd.DataFrame,
        *,
        history_len: int = HISTORY_LEN,
        tag_history_len: int = 50,
    ) -> None:
        if history_len < 1 or tag_history_len < 1:
            raise ValueError("history_len and tag_history_len must be >= 1")
        self.history_len = history_len
        self.tag_history_len = tag_history_len
        self.catalogue = ItemCatalogue.from_features(item_features_from_frame(illusts))
        created = to_seconds(illusts["create_time"]) if len(illusts) else np.zeros(0, np.int64)
        order = np.argsort(illusts["illust_id"].to_numpy(np.int64), kind="stable")
        self._created = created[order]
        self.history = BookmarkHistory.from_frame(interactions)
        users = interactions["user_id"].to_numpy(np.int64)
        seconds = to_seconds(interactions["create_time"]) if len(interactions) else users * 0
        labels = interactions["label"].to_numpy()
        self._bookmarks = EventCounter.build(users[labels == 1], seconds[labels == 1])
        self._views = EventCounter.build(users[labels != 1], seconds[labels != 1])
        artists = self._gather_int("artist_id", interactions["illust_id"].to_numpy(np.int64))
        keep = labels == 1
        self._artist_bookmarks = EventCounter.build(
            pair_key(users[keep], artists[keep]), seconds[keep]
        )
        timed = follows[follows["create_time"].notna()] if len(follows) else follows
        self._follows = EventCounter.build(
            pair_key(timed["user_id"].to_numpy(np.int64), timed["artist_id"].to_numpy(np.int64)),
            to_seconds(timed["create_time"]) if len(timed) else np.zeros(0, np.int64),
        )
        self._tag_ids, self._tag_matrix = self._intern_tags(self.catalogue.features["tags"])

    def _gather_int(self, name: str, illust_ids: np.ndarray) -> np.ndarray:
        return self.catalogue.gather(np.asarray(illust_ids, np.int64))[name].astype(np.int64)

    @staticmethod
    def _intern_tags(tags: np.ndarray) -> tuple[dict[str, int], np.ndarray]:
        """Catalogue tags as an int matrix [n_items + 1, max_tags] (-1 pads; last row = unknown)."""
        vocab: dict[str, int] = {}
        rows = [
            [
                vocab.setdefault(t, len(vocab))
                for t in dict.fromkeys(str(v).split(TAG_SEPARATOR))
                if t
            ]
            for v in tags
        ]
        width = max([len(r) for r in rows] + [1])
        matrix = np.full((len(rows) + 1, width), -1, np.int64)
        for i, r in enumerate(rows):
            matrix[i, : len(r)] = r
        return vocab, matrix

    def _tag_rows(self, illust_ids: np.ndarray) -> np.ndarray:
        ids = self.catalogue.ids
        pos = np.clip(np.searchsorted(ids, illust_ids), 0, max(len(ids) - 1, 0))
        known = (ids[pos] == illust_ids) if len(ids) else np.zeros(len(illust_ids), bool)
        return self._tag_matrix[np.where(known, pos, len(ids))]

    def tag_overlap(
        self, illust_ids: np.ndarray, tag_history: np.ndarray, chunk: int = 4096
    ) -> np.ndarray:
        """int64[B]: the item's distinct tags found among the tags of the history's items."""
        out = np.zeros(len(illust_ids), np.int64)
        for start in range(0, len(illust_ids), chunk):
            sl = slice(start, start + chunk)
            item_tags = self._tag_rows(np.asarray(illust_ids[sl], np.int64))  # [b, M]
            hist = tag_history[sl]
            hist_tags = self._tag_rows(hist.reshape(-1)).reshape(len(hist), -1)  # [b, H*M]
            hist_tags = np.where(
                np.repeat(hist != 0, self._tag_matrix.shape[1], axis=1), hist_tags, -1
            )
            match = (item_tags[:, :, None] == hist_tags[:, None, :]).any(axis=2) & (item_tags >= 0)
            out[sl] = match.sum(axis=1)
        return out

    def features(
        self,
        user_ids: Sequence[int] | np.ndarray,
        illust_ids: Sequence[int] | np.ndarray,
        request_times: Any,
        evidence: RecallEvidence | None = None,
    ) -> dict[str, np.ndarray]:
        """The raw ``rank`` inputs (:data:`RANK_INPUTS`) for each row, as of its request time."""
        users = np.asarray(user_ids, np.int64)
        items = np.asarray(illust_ids, np.int64)
        seconds = to_seconds(request_times)
        if not (len(users) == len(items) == len(seconds)):
            raise ValueError(
                f"row arrays differ in length: {len(users)}, {len(items)}, {len(seconds)}"
            )
        if np.any(seconds == np.iinfo(np.int64).min):
            raise ValueError("every row needs a request time (got a null)")
        as_of = seconds.astype("datetime64[s]")
        out: dict[str, np.ndarray] = {"user_id": users}
        out["history"] = self.history.histories(users, as_of, self.history_len)
        out["user_bookmarks"] = self._bookmarks.before(users, seconds)
        out["user_views"] = self._views.before(users, seconds)
        item = self.catalogue.gather(items)
        item["tags"] = item["tags"].astype(str)
        out.update(item)
        artists = item["artist_id"]
        out["artist_followed"] = (
            self._follows.before(pair_key(users, artists), seconds) > 0
        ).astype(np.int64)
        out["artist_history"] = self._artist_bookmarks.before(pair_key(users, artists), seconds)
        tag_history = (
            out["history"]
            if self.tag_history_len == self.history_len
            else self.history.histories(users, as_of, self.tag_history_len)
        )
        out["tag_overlap"] = self.tag_overlap(items, tag_history)
        ids = self.catalogue.ids
        pos = np.clip(np.searchsorted(ids, items), 0, max(len(ids) - 1, 0))
        known = (ids[pos] == items) if len(ids) else np.zeros(len(items), bool)
        created = self._created[pos] if len(ids) else np.zeros(len(items), np.int64)
        valid = known & (created != np.iinfo(np.int64).min) & (created <= seconds)
        out["item_age_s"] = np.where(valid, seconds - created, UNKNOWN_AGE).astype(np.int64)
        out.update((evidence or RecallEvidence.none(len(users))).as_features())
        return {name: out[name] for name in RANK_INPUTS}
