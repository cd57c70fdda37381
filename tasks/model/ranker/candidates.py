"""Candidate sets built like the API's pool: the ranker's gate holdout and its training rows.

One machinery for both (so training sees what serving and the gate feed the ranker):

* :func:`pool_sets` turns (user, cutoff, positive) targets into candidate sets as the API
  builds a pool over a snapshot holding every user's rows before its cutoff, requested at the
  snapshot's end + 1 s (serving's clock: ``data_as_of`` + 1 s): the recall channels ``ann`` (a two-tower's towers, when given),
  ``i2i`` (item-CF neighbours of the newest bookmarks), ``follow_new`` and ``hot``, built on
  the interactions known for the targets, merged round robin (channel order = priority) into
  ``pool`` items, seen items excluded; each candidate's recall evidence (hit, score, 1-based
  rank per channel, first occurrence, ranks counted before excluding seen items, as
  ``tasks.serving.ranking.build_pool``) and the features, from a builder over that snapshot,
  go through :class:`~tasks.model.ranker.features.RankingFeatureBuilder`: no row of the user
  at or after the cutoff reaches a feature.
* :func:`holdout_sets` (the gate): the leave-last-positive split of the interactions, one set
  per holdout user at its held-out positive. A positive recall missed is NOT appended: the
  served list can never hold it, so it scores as a miss for every list (:func:`list_ndcg`).
* :func:`training_sets` (the ranker's training rows): drop the gate's holdout, then cut
  ``tiers`` more leave-last-positive splits off the rest; tier ``j`` is each user's j-th last
  remaining positive, its channels built on the interactions before the tier's cutoffs (the
  gate's construction, applied to the train part). Label 1 = the tier's positive when recall
  returned it (``append_missed`` also appends the ones it missed, with their real evidence),
  0 = other pool members minus items the user bookmarks later (not "not liked"), subsampled
  to ``negatives``.

The channel builders are ``tasks.serving.recall``'s own, handed in as ``channels`` (this
package may not import ``tasks.serving``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from tasks.core.common import get_logger
from tasks.model.constants import HOT_N, I2I_SEEDS
from tasks.model.evaluate import grouped_list_metrics
from tasks.model.ranker.features import RECALL_CHANNELS, RankingFeatureBuilder, RecallEvidence
from tasks.model.scoring import ItemCatalogue

log = get_logger("ranker")

Scored = list[tuple[int, float]]
REQUEST_DELAY_S = 1  # tasks.serving.ranking.REQUEST_DELAY: a request is data_as_of + 1 s
# (user ids, histories int64[B, L], n) -> per user the ANN channel's top-n (id, score) list.
AnnChannel = Callable[[np.ndarray, np.ndarray, int], list[Scored]]


class RecallChannels(Protocol):
    """The channel builders of ``tasks.serving.recall`` (the module itself is passed in)."""

    def hot_items(
        self, interactions: pd.DataFrame, illusts: pd.DataFrame, *, as_of: datetime, n: int
    ) -> Scored: ...

    def follow_new_items(
        self, follows: pd.DataFrame, illusts: pd.DataFrame, *, as_of: datetime
    ) -> dict[int, list[int]]: ...

    def item_cf_neighbors(self, interactions: pd.DataFrame) -> dict[int, Scored]: ...

    def combine_neighbors(
        self, lists: Iterable[Sequence[tuple[int, float]]], *, n: int
    ) -> Scored: ...

    def merge_round_robin(
        self,
        channels: Sequence[tuple[str, Sequence[tuple[int, float]]]],
        k: int,
        *,
        exclude: Iterable[int] = (),
    ) -> list[Any]: ...


@dataclass(frozen=True)
class CandidateSets:
    """Candidate rows of several sets, each set in recall order.

    ``set_ids`` int64[N], ``labels`` int64[N] (1 = the set's positive), ``features`` the raw
    ``rank`` inputs per row; ``recalled`` how many sets hold the positive inside the recall
    pool. ``appended`` bool[N] marks positives appended after recall missed them (training
    only); ``tiers`` int64[N] the row's tier (0 = the gate's holdout).
    """

    set_ids: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray]
    recalled: int = 0
    appended: np.ndarray | None = None
    tiers: np.ndarray | None = None

    @property
    def n_sets(self) -> int:
        return len(np.unique(self.set_ids))

    def recall_order_scores(self) -> np.ndarray:
        """Scores that rank each set in its recall order (earlier = higher)."""
        return -np.arange(len(self.set_ids), dtype=np.float64)

    def subset(self, rows: np.ndarray) -> CandidateSets:
        """The rows where ``rows`` (bool[N]) holds; ``recalled`` recounted."""
        labels = self.labels[rows]
        appended = None if self.appended is None else self.appended[rows]
        hit = labels == 1 if appended is None else (labels == 1) & ~appended
        return CandidateSets(
            set_ids=self.set_ids[rows],
            labels=labels,
            features={k: v[rows] for k, v in self.features.items()},
            recalled=len(np.unique(self.set_ids[rows][hit])),
            appended=appended,
            tiers=None if self.tiers is None else self.tiers[rows],
        )


def list_ndcg(sets: CandidateSets, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over every set ranked by ``scores`` (ties keep recall order).

    As serving sees it: appended positives are dropped (recall missed them), and a set
    without a recalled positive counts as a miss (0) yet stays in the denominator.
    """
    keep = np.ones(len(sets.labels), bool) if sets.appended is None else ~sets.appended
    n_sets = sets.n_sets
    if n_sets == 0:
        return float("nan")
    labels, groups = sets.labels[keep], sets.set_ids[keep]
    with_positive = len(np.unique(groups[labels == 1]))
    if with_positive == 0:
        return 0.0
    found = grouped_list_metrics(groups, labels, np.asarray(scores)[keep], k)[f"NDCG@{k}"]
    return float(found * with_positive / n_sets)


@dataclass(frozen=True)
class Targets:
    """Aligned (user, cutoff, positive) arrays: one candidate set each."""

    users: np.ndarray
    cutoffs: np.ndarray  # datetime64[ns]
    positives: np.ndarray


def _leave_last(frame: pd.DataFrame, illusts: pd.DataFrame) -> tuple[pd.DataFrame, Targets]:
    """The leave-last-positive split as (train part, targets), users ascending."""
    from tasks.model.evaluate import leave_last_positive_split

    split = leave_last_positive_split(frame, item_ids=illusts["illust_id"].to_numpy(np.int64))
    users = split.user_ids[split.test_user_idx]
    order = np.argsort(users, kind="stable")
    train = split.train[["user_id", "illust_id", "label", "create_time"]]
    return train, Targets(
        users=users[order].astype(np.int64),
        cutoffs=pd.to_datetime(split.test_time[order]).to_numpy(),
        positives=split.item_ids[split.test_item_idx][order].astype(np.int64),
    )


def pool_sets(
    known: pd.DataFrame,
    builder: RankingFeatureBuilder,
    illusts: pd.DataFrame,
    follows: pd.DataFrame,
    channels: RecallChannels,
    targets: Targets,
    *,
    ann: AnnChannel | None = None,
    pool: int = 200,
    hot_n: int = HOT_N,
    append_missed: bool = False,
    negatives: int | None = None,
    later_positives: dict[int, set[int]] | None = None,
    seed: int = 0,
    set_offset: int = 0,
    tier: int = 0,
) -> CandidateSets:
    """One API-like candidate set per target (module doc), channels built on ``known``.

    ``known``: the snapshot (every user's rows before its cutoff; seen = the user's rows in
    it); channels, features (``builder`` must be built on it) and requests as of its end. ``negatives`` subsamples each set's label-0 rows
    (seeded); ``later_positives[user]`` are dropped from the negatives.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    users, positives = targets.users, targets.positives
    as_of = pd.Timestamp(known["create_time"].max()).to_pydatetime()
    # Serving's clock: every request at the snapshot's end + 1 s (tasks.serving.ranking's
    # REQUEST_DELAY), never at the positive's own time (an item's age at the very moment it
    # was bookmarked, or "not out yet" for pool items created after a user's cutoff, would
    # tell the positive apart in a way serving never sees).
    request = np.datetime64(pd.Timestamp(as_of).floor("s").to_datetime64(), "s") + np.timedelta64(
        REQUEST_DELAY_S, "s"
    )
    request_times = np.full(len(users), request)
    histories = builder.history.histories(users, request_times, builder.history_len)
    seen = known.groupby("user_id")["illust_id"].apply(lambda s: set(s.astype(int)))
    neighbors = channels.item_cf_neighbors(known)
    follow_new = channels.follow_new_items(follows, illusts, as_of=as_of)
    hot = channels.hot_items(known, illusts, as_of=as_of, n=hot_n)
    most_seen = max((len(seen.get(int(u), ())) for u in users), default=0)
    ann_lists = ann(users, histories, pool + most_seen) if ann is not None else None
    rng = np.random.default_rng(seed)
    index = {name: c for c, name in enumerate(RECALL_CHANNELS)}

    rows_user, rows_item, rows_time, rows_label, rows_set, rows_app = [], [], [], [], [], []
    evidence: list[dict[str, tuple[float, int]]] = []
    recalled = 0
    for i, user in enumerate(users):
        user_seen = seen.get(int(user), set())
        lists: list[tuple[str, Scored]] = []
        if ann_lists is not None:
            lists.append(("ann", ann_lists[i][: pool + len(user_seen)]))
        seeds = [int(h) for h in histories[i][:I2I_SEEDS] if h]
        if seeds:
            combined = channels.combine_neighbors(
                (neighbors.get(s, []) for s in seeds), n=pool + len(user_seen)
            )
            lists.append(("i2i", combined))
        follow = follow_new.get(int(user), [])
        if follow:
            lists.append(("follow_new", [(int(x), 1.0 / (r + 1)) for r, x in enumerate(follow)]))
        lists.append(("hot", hot))
        merged = [
            int(c.illust_id) for c in channels.merge_round_robin(lists, pool, exclude=user_seen)
        ]
        positive = int(positives[i])
        appended: list[bool] = [False] * len(merged)
        if positive in merged:
            recalled += 1
        elif append_missed:
            merged.append(positive)
            appended.append(True)
        if negatives is not None or later_positives:
            later = (later_positives or {}).get(int(user), set())
            negs = [j for j, x in enumerate(merged) if x != positive and x not in later]
            if negatives is not None and len(negs) > negatives:
                negs = sorted(rng.choice(negs, size=negatives, replace=False).tolist())
            keep = sorted(set(negs) | {j for j, x in enumerate(merged) if x == positive})
            merged = [merged[j] for j in keep]
            appended = [appended[j] for j in keep]
        where: dict[str, dict[int, tuple[float, int]]] = {}
        for name, items in lists:
            hits = where.setdefault(name, {})
            for r, (x, s) in enumerate(items):
                hits.setdefault(int(x), (float(s), r + 1))
        for item, was_appended in zip(merged, appended, strict=True):
            rows_user.append(int(user))
            rows_item.append(item)
            rows_time.append(request_times[i])
            rows_label.append(int(item == positive))
            rows_set.append(set_offset + i)
            rows_app.append(was_appended)
            evidence.append({n: h[item] for n, h in where.items() if item in h and n in index})
    features = builder.features(
        np.asarray(rows_user, np.int64),
        np.asarray(rows_item, np.int64),
        pd.to_datetime(pd.Series(rows_time, dtype="datetime64[ns]")),
        RecallEvidence.from_rows(evidence),
    )
    log.info(
        "tier %d: %d candidate sets (%d rows), positive recalled in %d, channels %s",
        tier,
        len(users),
        len(rows_item),
        recalled,
        [name for name in RECALL_CHANNELS if name != "ann" or ann is not None],
    )
    return CandidateSets(
        set_ids=np.asarray(rows_set, np.int64),
        labels=np.asarray(rows_label, np.int64),
        features=features,
        recalled=recalled,
        appended=np.asarray(rows_app, bool),
        tiers=np.full(len(rows_item), tier, np.int64),
    )


def holdout_sets(
    interactions: pd.DataFrame,
    illusts: pd.DataFrame,
    follows: pd.DataFrame,
    channels: RecallChannels,
    *,
    ann: AnnChannel | None = None,
    pool: int = 200,
    hot_n: int = HOT_N,
    max_users: int | None = 2000,
    history_len: int | None = None,
) -> CandidateSets:
    """The gate's sets: one per leave-last-positive holdout user (lowest ``max_users`` ids),
    positives recall missed not appended (they count as misses in :func:`list_ndcg`)."""
    from tasks.model.features import HISTORY_LEN

    frame = _timed(interactions)
    train, targets = _leave_last(frame, illusts)
    if len(targets.users) == 0:
        raise ValueError("holdout has no test users: cannot build candidate sets")
    if max_users:
        targets = Targets(
            targets.users[:max_users], targets.cutoffs[:max_users], targets.positives[:max_users]
        )
    builder = RankingFeatureBuilder(train, illusts, follows, history_len=history_len or HISTORY_LEN)
    return pool_sets(
        train, builder, illusts, follows, channels, targets, ann=ann, pool=pool, hot_n=hot_n
    )


def training_sets(
    interactions: pd.DataFrame,
    illusts: pd.DataFrame,
    follows: pd.DataFrame,
    channels: RecallChannels,
    *,
    ann: AnnChannel | None = None,
    tiers: int = 3,
    pool: int = 200,
    negatives: int | None = 50,
    hot_n: int = HOT_N,
    history_len: int | None = None,
    tag_history_len: int = 50,
    seed: int = 0,
    append_missed: bool = False,
) -> CandidateSets:
    """The ranker's candidate training sets (module doc): tiers 1..``tiers`` below the gate's
    holdout, every set at a cutoff strictly before the user's holdout positive.
    ``append_missed``: append a positive recall missed (with its real evidence); off, such a
    set trains with its negatives only, as serving only ever ranks the pool."""
    from tasks.model.features import HISTORY_LEN

    if tiers < 1:
        raise ValueError(f"tiers must be >= 1, got {tiers}")
    known, _ = _leave_last(_timed(interactions), illusts)  # the gate's holdout removed
    parts: list[CandidateSets] = []
    offset = 0
    for tier in range(1, tiers + 1):
        before, targets = _leave_last(known, illusts)
        if len(targets.users) == 0:
            break
        later = _later_positives(known)
        builder = RankingFeatureBuilder(
            before,
            illusts,
            follows,
            history_len=history_len or HISTORY_LEN,
            tag_history_len=tag_history_len,
        )
        part = pool_sets(
            before,
            builder,
            illusts,
            follows,
            channels,
            targets,
            ann=ann,
            pool=pool,
            hot_n=hot_n,
            append_missed=append_missed,
            negatives=negatives,
            later_positives=later,
            seed=seed + tier,
            set_offset=offset,
            tier=tier,
        )
        parts.append(part)
        offset += len(targets.users)
        known = before
    if not parts:
        raise ValueError("no user has a positive below the holdout: no training sets")
    return CandidateSets(
        set_ids=np.concatenate([p.set_ids for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        features={k: np.concatenate([p.features[k] for p in parts]) for k in parts[0].features},
        recalled=sum(p.recalled for p in parts),
        appended=np.concatenate([p.appended for p in parts if p.appended is not None]),
        tiers=np.concatenate([p.tiers for p in parts if p.tiers is not None]),
    )


def holdout_cutoffs(interactions: pd.DataFrame, illusts: pd.DataFrame) -> pd.Series:
    """Per holdout user: the time of the gate's held-out positive (rows from then on are the
    gate's, not training's); empty without interactions."""
    if interactions.empty:
        return pd.Series([], index=pd.Index([], dtype=np.int64), dtype="datetime64[ns]")
    _, targets = _leave_last(_timed(interactions), illusts)
    return pd.Series(targets.cutoffs, index=targets.users)


def _later_positives(frame: pd.DataFrame) -> dict[int, set[int]]:
    """Per user: every illust they bookmark in ``frame`` (a tier's target and later)."""
    positives = frame[frame["label"] == 1]
    return {int(u): set(g.astype(int)) for u, g in positives.groupby("user_id")["illust_id"]}


def _timed(interactions: pd.DataFrame) -> pd.DataFrame:
    frame = interactions[["user_id", "illust_id", "label", "create_time"]].copy()
    frame["create_time"] = pd.to_datetime(frame["create_time"])
    return frame


def export_ann(saved_model_dir: str | Path, catalogue: ItemCatalogue) -> AnnChannel:
    """The ANN channel of a two-tower SavedModel (exact dot product over ``catalogue``),
    loaded on first use."""
    cache: dict[str, Any] = {}

    def channel(users: np.ndarray, histories: np.ndarray, n: int) -> list[Scored]:
        import tensorflow as tf

        from tasks.model.scoring import saved_model_towers

        if "towers" not in cache:
            user_fn, item_fn = saved_model_towers(tf.saved_model.load(str(saved_model_dir)))
            item_vecs = np.concatenate(
                [
                    item_fn(catalogue.gather(catalogue.ids[s : s + 1024]))
                    for s in range(0, len(catalogue.ids), 1024)
                ]
            )
            cache["towers"] = (user_fn, item_vecs)
        user_fn, item_vecs = cache["towers"]
        out: list[Scored] = []
        for s in range(0, len(users), 256):
            vecs = user_fn({"user_id": users[s : s + 256], "history": histories[s : s + 256]})
            scores = vecs @ item_vecs.T
            for row in scores:
                top = np.argsort(-row, kind="stable")[:n]
                out.append([(int(catalogue.ids[j]), float(row[j])) for j in top])
        return out

    return channel
