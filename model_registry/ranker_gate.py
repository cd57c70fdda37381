"""The ranker's promotion gate: NDCG@10 of ranked candidate lists on the holdout.

The holdout is the two-tower gate's: the leave-last-positive split of the mirror's
interactions before the challenger's ``data_interval_end``. Each holdout user gets a candidate
set as the API builds one over the split's train part (every user's rows before its held-out
positive), requested at that snapshot's end + 1 s (serving's ``data_as_of`` + 1 s): the recall
channels ``ann`` (the two-tower champion's towers, when there is one), ``i2i`` (item-CF
neighbours of the newest bookmarks), ``follow_new`` and ``hot``, merged round robin into a pool
of ``pool`` items, seen items excluded (:func:`tasks.model.ranker.candidates.holdout_sets`, the
machinery the ranker's training sets come from too). A held-out positive recall missed is NOT
appended: the served list can never hold it, so that set scores 0 for every list and stays in
the denominator (:func:`~tasks.model.ranker.candidates.list_ndcg`). Channel lists come from
``tasks.serving.recall``'s own builders, handed in as ``channels`` (this package may not import
``tasks.serving``); every candidate's evidence (hit, score, 1-based rank per channel) and
point-in-time features go through :class:`~tasks.model.ranker.features.RankingFeatureBuilder`.

Three lists per set are scored with NDCG@k (one relevant item): the recall order, the
challenger's ranking and the current champion's ranking. The challenger is promoted (alias
``champion`` set) only if it beats the recall order *and* the champion by more than
``margin``; the decision, reason and the three scores are tagged on the version and logged as
metrics on the challenger's MLflow run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

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
from tasks.model.constants import HOT_N
from tasks.model.ranker.candidates import (
    AnnChannel,
    CandidateSets,
    RecallChannels,
    Scored,
    export_ann,
    holdout_sets,
    list_ndcg,
)
from tasks.model.scoring import ItemCatalogue

log = get_logger("ranker_gate")

# Scores raw rank inputs with one registered ranker version.
RankerScorer = Callable[[Settings, ModelRef, Mapping[str, np.ndarray]], np.ndarray]


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
    frame = interactions.copy()
    frame["create_time"] = pd.to_datetime(frame["create_time"])
    if interval_end is not None:
        frame = frame[frame["create_time"] < pd.Timestamp(to_naive_utc(interval_end))]
    try:
        return holdout_sets(
            frame,
            illusts,
            follows,
            channels,
            ann=ann,
            pool=pool,
            hot_n=hot_n,
            max_users=max_users,
            history_len=history_len,
        )
    except ValueError as exc:
        raise RegistryError(str(exc)) from exc


def champion_ann(settings: Settings, catalogue: ItemCatalogue) -> AnnChannel | None:
    """The ANN channel of the two-tower champion (exact dot product over ``catalogue``), or
    None when the two-tower has no champion."""
    ref = resolve_alias(settings, CHAMPION)
    if ref is None:
        return None

    def channel(users: np.ndarray, histories: np.ndarray, n: int) -> list[Scored]:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_saved_model(settings, ref, Path(tmp))
            return export_ann(path, catalogue)(users, histories, n)

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
