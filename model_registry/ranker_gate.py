"""The ranker's promotion gate: NDCG@10 of ranked candidate lists on the holdout.

The holdout is the two-tower gate's: the leave-last-positive split of the mirror's
interactions before the challenger's ``data_interval_end``. Each holdout user gets a candidate
set as the API builds one at the user's cutoff (the time of the held-out positive): the recall
channels ``ann`` (the two-tower champion's towers, when there is one), ``i2i`` (item-CF
neighbours of the newest bookmarks), ``follow_new`` and ``hot``, merged round robin into a pool
of ``pool`` items, seen items excluded; the held-out positive is appended (with whatever
evidence the channels hold for it) when recall missed it. Channel lists come from
``tasks.serving.recall``'s own builders, handed in as ``channels`` (this package may not import
``tasks.serving``); every candidate's evidence (hit, score, 1-based rank per channel) and
point-in-time features go through :class:`~tasks.model.ranker.features.RankingFeatureBuilder`,
as for the training rows.

Three lists per set are scored with NDCG@k (one relevant item): the recall order, the
challenger's ranking and the current champion's ranking. The challenger is promoted (alias
``champion`` set) only if it beats the recall order *and* the champion by more than
``margin``; the decision, reason and the three scores are tagged on the version and logged as
metrics on the challenger's MLflow run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from model_registry.registry import (
    CHAMPION,
    GATE_DECISION_TAG,
    GATE_REASON_TAG,
    ModelRef,
    RegistryError,
    client,
    download_saved_model,
    get_version,
    resolve_alias,
    run_url_of,
    set_champion,
)
from tasks.core.common import StageResult, get_logger, to_naive_utc
from tasks.core.lineage import RunLineage
from tasks.core.settings import Settings
from tasks.model.constants import HOT_N, I2I_SEEDS
from tasks.model.evaluate import grouped_list_metrics
from tasks.model.ranker.features import RECALL_CHANNELS, RankingFeatureBuilder, RecallEvidence
from tasks.model.scoring import ItemCatalogue

log = get_logger("ranker_gate")

Scored = list[tuple[int, float]]


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


# (user ids, histories int64[B, L]) -> per user the ANN channel's (id, score) list.
AnnChannel = Callable[[np.ndarray, np.ndarray, int], list[Scored]]
# Scores raw rank inputs with one registered ranker version.
RankerScorer = Callable[[Settings, ModelRef, Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class CandidateSets:
    """Candidate rows of every holdout user, each set in recall order.

    ``set_ids`` int64[N] (one set per user), ``labels`` int64[N] (1 = the held-out positive),
    ``features`` the raw ``rank`` inputs per row; ``recalled`` how many sets had the
    positive inside the recall pool (the others have it appended last).
    """

    set_ids: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray]
    recalled: int = 0

    @property
    def n_sets(self) -> int:
        return len(np.unique(self.set_ids))

    def recall_order_scores(self) -> np.ndarray:
        """Scores that rank each set in its recall order (earlier = higher)."""
        return -np.arange(len(self.set_ids), dtype=np.float64)


def list_ndcg(sets: CandidateSets, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k of the sets ranked by ``scores`` (ties keep recall order)."""
    return grouped_list_metrics(sets.set_ids, sets.labels, scores, k)[f"NDCG@{k}"]


@dataclass(frozen=True)
class RankerGateDecision(StageResult):
    promoted: bool
    reason: str
    challenger_version: int
    champion_version: int | None
    metric: str
    challenger_score: float
    recall_order_score: float
    champion_score: float | None
    n_sets: int
    recalled: int
    run_url: str = ""


def build_candidate_sets(
    interactions: pd.DataFrame,
    illusts: pd.DataFrame,
    follows: pd.DataFrame,
    channels: RecallChannels,
    *,
    interval_end: datetime | str | None = None,
    ann: AnnChannel | None = None,
    pool: int = 200,
    hot_n: int = HOT_N,
    max_users: int | None = 2000,
    history_len: int | None = None,
) -> CandidateSets:
    """One candidate set per holdout user (module doc), with point-in-time features.

    ``interactions`` (user_id, illust_id, label, create_time) are cut before ``interval_end``
    and split leave-last-positive; ``max_users`` keeps the lowest user ids (deterministic).
    """
    from tasks.model.evaluate import leave_last_positive_split
    from tasks.model.features import HISTORY_LEN

    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    history_len = history_len or HISTORY_LEN
    frame = interactions.copy()
    frame["create_time"] = pd.to_datetime(frame["create_time"])
    if interval_end is not None:
        frame = frame[frame["create_time"] < pd.Timestamp(to_naive_utc(interval_end))]
    split = leave_last_positive_split(frame, item_ids=illusts["illust_id"].to_numpy(np.int64))
    if len(split.test_user_idx) == 0:
        raise RegistryError("holdout has no test users: cannot build candidate sets")
    users = split.user_ids[split.test_user_idx]
    order = np.argsort(users, kind="stable")[: max_users or None]
    users = users[order]
    positives = split.item_ids[split.test_item_idx][order]
    cutoffs = pd.to_datetime(split.test_time[order]).to_numpy()
    train = split.train
    as_of = pd.Timestamp(train["create_time"].max()).to_pydatetime()

    builder = RankingFeatureBuilder(train, illusts, follows, history_len=history_len)
    histories = builder.history.histories(users, cutoffs.astype("datetime64[s]"), history_len)
    seen = train.groupby("user_id")["illust_id"].apply(lambda s: set(s.astype(int)))
    neighbors = channels.item_cf_neighbors(train)
    follow_new = channels.follow_new_items(follows, illusts, as_of=as_of)
    hot = channels.hot_items(train, illusts, as_of=as_of, n=hot_n)
    ann_lists = ann(users, histories, pool) if ann is not None else None

    rows_user, rows_item, rows_time, rows_label, rows_set, evidence = [], [], [], [], [], []
    recalled = 0
    for i, user in enumerate(users):
        user_seen = seen.get(int(user), set())
        lists: list[tuple[str, Scored]] = []
        if ann_lists is not None:
            lists.append(("ann", ann_lists[i]))
        seeds = [int(h) for h in histories[i][:I2I_SEEDS] if h]
        if seeds:
            lists.append(
                (
                    "i2i",
                    channels.combine_neighbors(
                        (neighbors.get(s, []) for s in seeds), n=pool + len(user_seen)
                    ),
                )
            )
        follow = follow_new.get(int(user), [])
        if follow:
            lists.append(("follow_new", [(int(x), 1.0 / (r + 1)) for r, x in enumerate(follow)]))
        lists.append(("hot", hot))
        merged = [
            int(c.illust_id) for c in channels.merge_round_robin(lists, pool, exclude=user_seen)
        ]
        positive = int(positives[i])
        if positive in merged:
            recalled += 1
        else:
            merged.append(positive)
        where = {
            name: {int(x): (float(s), r + 1) for r, (x, s) in enumerate(items)}
            for name, items in lists
        }
        for item in merged:
            rows_user.append(int(user))
            rows_item.append(item)
            rows_time.append(cutoffs[i])
            rows_label.append(int(item == positive))
            rows_set.append(i)
            evidence.append({name: hits[item] for name, hits in where.items() if item in hits})
    features = builder.features(
        np.asarray(rows_user, np.int64),
        np.asarray(rows_item, np.int64),
        pd.to_datetime(pd.Series(rows_time)),
        RecallEvidence.from_rows(evidence),
    )
    log.info(
        "ranker holdout: %d candidate sets (%d rows), positive recalled in %d, channels %s",
        len(users),
        len(rows_item),
        recalled,
        RECALL_CHANNELS,
    )
    return CandidateSets(
        set_ids=np.asarray(rows_set, np.int64),
        labels=np.asarray(rows_label, np.int64),
        features=features,
        recalled=recalled,
    )


def champion_ann(settings: Settings, catalogue: ItemCatalogue) -> AnnChannel | None:
    """The ANN channel of the two-tower champion (exact dot product over ``catalogue``), or
    None when the two-tower has no champion."""
    ref = resolve_alias(settings, CHAMPION)
    if ref is None:
        return None

    def channel(users: np.ndarray, histories: np.ndarray, n: int) -> list[Scored]:
        import tensorflow as tf

        from tasks.model.scoring import saved_model_towers

        with tempfile.TemporaryDirectory() as tmp:
            path = download_saved_model(settings, ref, Path(tmp))
            user_fn, item_fn = saved_model_towers(tf.saved_model.load(str(path)))
            item_vecs = np.concatenate(
                [
                    item_fn(catalogue.gather(catalogue.ids[s : s + 1024]))
                    for s in range(0, len(catalogue.ids), 1024)
                ]
            )
            out: list[Scored] = []
            for s in range(0, len(users), 256):
                vecs = user_fn({"user_id": users[s : s + 256], "history": histories[s : s + 256]})
                scores = vecs @ item_vecs.T
                for row in scores:
                    top = np.argsort(-row, kind="stable")[:n]
                    out.append([(int(catalogue.ids[j]), float(row[j])) for j in top])
        return out

    return channel


def score_ranker_version(
    settings: Settings, ref: ModelRef, features: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Download a registered ranker's SavedModel and score rows with its ``rank`` signature."""
    import tensorflow as tf

    from tasks.model.ranker.saved import score_rank

    with tempfile.TemporaryDirectory() as tmp:
        path = download_saved_model(settings, ref, Path(tmp))
        return score_rank(tf.saved_model.load(str(path)), features)


def load_candidate_sets(
    settings: Settings,
    channels: RecallChannels,
    interval_end: datetime | str,
    *,
    pool: int = 200,
    max_users: int | None = 2000,
) -> CandidateSets:
    """Candidate sets from the recsys DB mirror before ``interval_end`` (module doc)."""
    from tasks.core.db import get_engine
    from tasks.model.features import item_features_from_frame
    from tasks.model.ranker.rows import read_ranking_frames

    frames = read_ranking_frames(get_engine(settings.recsys_db_url), to_naive_utc(interval_end))
    catalogue = ItemCatalogue.from_features(item_features_from_frame(frames.illusts))
    return build_candidate_sets(
        frames.interactions,
        frames.illusts,
        frames.follows,
        channels,
        ann=champion_ann(settings, catalogue),
        pool=pool,
        max_users=max_users,
    )


def promote_ranker_if_better(
    settings: Settings,
    version: int,
    channels: RecallChannels | None = None,
    *,
    sets: CandidateSets | None = None,
    k: int = 10,
    margin: float = 0.0,
    scorer: RankerScorer = score_ranker_version,
    lineage: RunLineage | None = None,
) -> RankerGateDecision:
    """Promote ranker ``version`` iff its NDCG@k beats the recall order and the champion's by
    more than ``margin`` on the same candidate sets (``sets``, or built with ``channels``)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    model = settings.ranker_registered_model_name
    challenger = get_version(settings, version, model=model)
    if sets is None:
        if channels is None:
            raise ValueError("promote_ranker_if_better needs candidate sets or recall channels")
        end = challenger.tags.get("data_interval_end")
        if not end:
            raise RegistryError(f"{model} v{version} has no data_interval_end tag")
        sets = load_candidate_sets(settings, channels, end)
    if sets.n_sets == 0:
        raise RegistryError("no candidate sets: cannot compare rankers")
    metric = f"NDCG@{k}"
    recall_score = list_ndcg(sets, sets.recall_order_scores(), k)
    challenger_score = list_ndcg(sets, scorer(settings, challenger, sets.features), k)
    champion = resolve_alias(settings, CHAMPION, model=model)
    champion_score: float | None = None
    if champion is not None and champion.version != challenger.version:
        champion_score = list_ndcg(sets, scorer(settings, champion, sets.features), k)
    already = champion is not None and champion.version == challenger.version
    if already:
        wins, reason = False, f"v{version} is already champion"
    else:
        beats_recall = challenger_score > recall_score + margin
        beats_champion = champion_score is None or challenger_score > champion_score + margin
        wins = beats_recall and beats_champion
        against = [f"recall order {recall_score:.4f}"]
        if champion_score is not None and champion is not None:
            against.append(f"champion v{champion.version} {champion_score:.4f}")
        verdict = "beats" if wins else "does not beat"
        reason = (
            f"{metric} {challenger_score:.4f} {verdict} {' and '.join(against)} + margin "
            f"{margin:g} on {sets.n_sets} holdout candidate sets "
            f"(positive recalled in {sets.recalled})"
        )
    if wins:
        set_champion(settings, challenger.version, reason=reason, model=model)
    decision = RankerGateDecision(
        promoted=wins,
        reason=reason,
        challenger_version=challenger.version,
        champion_version=challenger.version
        if wins
        else (champion.version if champion is not None else None),
        metric=metric,
        challenger_score=challenger_score,
        recall_order_score=recall_score,
        champion_score=champion_score,
        n_sets=sets.n_sets,
        recalled=sets.recalled,
    )
    if already:  # a re-run after promoting (a retry): keep the promoting decision's record
        log.info("ranker v%d is already champion; gate record left as it was", version)
        return replace(decision, run_url=run_url_of(settings, challenger.run_id))
    return _record(settings, decision, challenger, lineage)


def _record(
    settings: Settings,
    decision: RankerGateDecision,
    challenger: ModelRef,
    lineage: RunLineage | None,
) -> RankerGateDecision:
    """Tag the version and log the gate's numbers on the challenger's MLflow run."""
    mlflow_client = client(settings)
    model = settings.ranker_registered_model_name
    tags = {
        GATE_DECISION_TAG: "promoted" if decision.promoted else "not promoted",
        GATE_REASON_TAG: decision.reason,
        "gate.metric": decision.metric,
        "gate.challenger_score": f"{decision.challenger_score:.6f}",
        "gate.recall_order_score": f"{decision.recall_order_score:.6f}",
        "gate.champion_score": ""
        if decision.champion_score is None
        else f"{decision.champion_score:.6f}",
    }
    if lineage is not None:
        tags["gate.airflow_run_id"] = lineage.run_id
        if lineage.ti_url:
            tags["gate.airflow_task_instance_url"] = lineage.ti_url
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model, str(challenger.version), key, value)
    if challenger.run_id:
        name = decision.metric.replace("@", "_at_")
        metrics = {
            f"gate_{name}_ranked": decision.challenger_score,
            f"gate_{name}_recall_order": decision.recall_order_score,
            "gate_sets": float(decision.n_sets),
            "gate_positive_recalled": float(decision.recalled),
            "gate_promoted": float(decision.promoted),
        }
        if decision.champion_score is not None:
            metrics[f"gate_{name}_champion"] = decision.champion_score
        for key, value in metrics.items():
            mlflow_client.log_metric(challenger.run_id, key, value)
        mlflow_client.set_tag(challenger.run_id, "gate_reason", decision.reason)
    url = run_url_of(settings, challenger.run_id)
    verdict = "promoted" if decision.promoted else "not promoting"
    log.info("ranker %s v%d: %s", verdict, challenger.version, decision.reason)
    return replace(decision, run_url=url)
