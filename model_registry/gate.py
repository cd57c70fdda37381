"""Promotion gate: the challenger becomes champion only if it wins on the same holdout.

Both the challenger and the *current* champion (alias read fresh: a person may have moved it)
are re-scored on one holdout — logged numbers from older runs are not trusted, since they were
measured on other data. The challenger must also beat the floor baseline computed on that same
holdout: by default the strongest of MostPop, ItemKNN and EASE^R (``floor="strongest"``; or one
of them by name), the first model too. The baselines fit memory on any catalogue: ItemKNN's
similarity is sparse; EASE's dense item x item inverse is capped at ``max_dense_items`` (the
most bookmarked items; the record says so). The reference is the best of the champion and the
floor; the reason names every score (HR@10 and NDCG@10 of all of them).
Every decision is stored on the challenger version as a few tags: ``gate_decision``,
``gate_reason`` and the compared scores (``gate.metric``, ``gate.challenger_score``,
``gate.reference``, ``gate.reference_score``, ``gate.scores`` as JSON, ``gate.baselines``),
plus the Airflow run that decided it when a ``lineage`` is given. The decision carries the
challenger's MLflow run link (``run_url``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

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
from tasks.model.evaluate import LeaveLastSplit, evaluate_baselines, leave_last_positive_split
from tasks.model.features import HISTORY_LEN
from tasks.model.scoring import ItemCatalogue

log = get_logger("gate")

BASELINES = ("MostPop", "ItemKNN", "EASE")
FLOORS = ("strongest", *BASELINES)
GATE_MAX_DENSE_ITEMS = 20_000  # EASE's dense item x item inverse: 20k^2 float64 = 3.2 GB
REPORTED = ("HR@10", "NDCG@10")


@dataclass(frozen=True)
class Holdout:
    """A leave-last-positive split plus the raw item features to score its catalogue."""

    split: LeaveLastSplit
    catalogue: ItemCatalogue
    history_len: int = HISTORY_LEN


@dataclass(frozen=True)
class GateDecision(StageResult):
    promoted: bool
    reason: str
    champion_version: int | None
    challenger_version: int
    metric: str
    challenger_score: float
    reference_score: float
    reference: str
    run_url: str = ""
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    baselines_note: str = ""


# Scores one registered version on a holdout: returns rank metrics (HR@10, NDCG@10, ...).
VersionScorer = Callable[[Settings, ModelRef, Holdout], dict[str, float]]


def load_holdout(settings: Settings, interval_end: datetime | str | None = None) -> Holdout:
    """The holdout from the recsys DB mirror: interactions before ``interval_end``.

    Point in time: the catalogue's count features are :class:`ItemCounts` over the split's
    train part (never the replica's live totals); scoring re-takes them as of each query's
    cutoff (``tasks.model.scoring.tower_scores``), so no holdout interaction reaches a feature.
    """
    import pandas as pd
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.schema import mirror_illusts, mirror_interactions
    from tasks.model.features import ItemCounts, item_features_from_frame

    engine = get_engine(settings.recsys_db_url)
    query = sa.select(
        mirror_interactions.c.user_id,
        mirror_interactions.c.illust_id,
        mirror_interactions.c.label,
        mirror_interactions.c.create_time,
    )
    if interval_end is not None:
        query = query.where(mirror_interactions.c.create_time < to_naive_utc(interval_end))
    with engine.connect() as conn:
        interactions = pd.read_sql(query, conn)
        illusts = pd.read_sql(sa.select(mirror_illusts), conn)
    catalogue = ItemCatalogue.from_features(item_features_from_frame(illusts))
    split = leave_last_positive_split(interactions, item_ids=catalogue.ids)
    counts = ItemCounts.from_frame(split.train)
    catalogue = ItemCatalogue.from_features(counts.apply(catalogue.features, interval_end))
    log.info(
        "holdout: %d interactions before %s, %d test users",
        len(interactions),
        interval_end,
        len(split.test_user_idx),
    )
    return Holdout(split=split, catalogue=catalogue)


def score_saved_model(settings: Settings, ref: ModelRef, holdout: Holdout) -> dict[str, float]:
    """Download the version's SavedModel and rank the holdout with its towers."""
    import tensorflow as tf

    from tasks.model.scoring import saved_model_towers, tower_scores

    with tempfile.TemporaryDirectory() as tmp:
        path = download_saved_model(settings, ref, Path(tmp))
        user_fn, item_fn = saved_model_towers(tf.saved_model.load(str(path)))
        return tower_scores(
            holdout.split,
            holdout.catalogue,
            user_fn,
            item_fn,
            history_len=holdout.history_len,
        )


def holdout_baselines(
    split: LeaveLastSplit, *, max_dense_items: int = GATE_MAX_DENSE_ITEMS
) -> tuple[dict[str, dict[str, float]], str]:
    """MostPop, ItemKNN and EASE^R on the holdout, and a note of how EASE was fitted."""
    scores = evaluate_baselines(split, max_dense_items=max_dense_items)
    ease = scores["EASE"]
    items = int(ease.get("items", split.n_items))
    note = (
        f"EASE (lambda {ease['lambda']:g}) on all {split.n_items} items"
        if items >= split.n_items
        else f"EASE (lambda {ease['lambda']:g}) on the {items} most bookmarked of "
        f"{split.n_items} items (max_dense_items {max_dense_items})"
    )
    return scores, note


def _pair(metrics: dict[str, float]) -> str:
    return "/".join(f"{metrics[m]:.4f}" if m in metrics else "n/a" for m in REPORTED)


def promote_if_better(
    settings: Settings,
    version: int,
    *,
    metric: str = "HR@10",
    margin: float = 0.0,
    holdout: Holdout | None = None,
    scorer: VersionScorer = score_saved_model,
    lineage: RunLineage | None = None,
    floor: str = "strongest",
    max_dense_items: int = GATE_MAX_DENSE_ITEMS,
) -> GateDecision:
    """Promote ``version`` to champion iff it beats both the current champion (if any) and
    the ``floor`` baseline (default the strongest of MostPop / ItemKNN / EASE) by more than
    ``margin`` on ``metric``, all scored on the same ``holdout``.

    The decision, its reason and both scores are tagged on the version (with ``lineage``'s
    DAG run and task-instance link when given) and logged with the challenger's run link.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {FLOORS}, got {floor!r}")
    challenger = get_version(settings, version)
    if holdout is None:
        holdout = load_holdout(settings, challenger.tags.get("data_interval_end"))
    if len(holdout.split.test_user_idx) == 0:
        raise RegistryError("holdout has no test users: cannot compare models")
    challenger_metrics = scorer(settings, challenger, holdout)
    if metric not in challenger_metrics:
        raise ValueError(f"metric {metric!r} not among {sorted(challenger_metrics)}")
    challenger_score = challenger_metrics[metric]

    champion = resolve_alias(settings, CHAMPION)  # fresh: the UI may have moved it
    if champion is not None and champion.version == challenger.version:
        return _decide(
            settings,
            GateDecision(
                promoted=False,
                reason=f"v{version} is already champion",
                champion_version=champion.version,
                challenger_version=challenger.version,
                metric=metric,
                challenger_score=challenger_score,
                reference_score=challenger_score,
                reference=f"v{version}",
            ),
            challenger,
            lineage,
        )
    baselines, note = holdout_baselines(holdout.split, max_dense_items=max_dense_items)
    candidates = {name: baselines[name] for name in BASELINES if floor in ("strongest", name)}
    if champion is not None:
        candidates[f"champion v{champion.version}"] = scorer(settings, champion, holdout)
    reference = max(candidates, key=lambda name: candidates[name].get(metric, float("-inf")))
    reference_score = candidates[reference][metric]

    wins = challenger_score > reference_score + margin
    verdict = "beats" if wins else "does not beat"
    scores = {f"v{version}": challenger_metrics, **baselines, **candidates}
    listed = ", ".join(f"{name} {_pair(values)}" for name, values in scores.items())
    reason = (
        f"{metric} {challenger_score:.4f} {verdict} {reference} {reference_score:.4f} "
        f"+ margin {margin:g} on {len(holdout.split.test_user_idx)} holdout users "
        f"(floor: {floor}; {'/'.join(REPORTED)}: {listed}; {note})"
    )
    if wins:
        set_champion(settings, challenger.version, reason=reason)
    return _decide(
        settings,
        GateDecision(
            promoted=wins,
            reason=reason,
            champion_version=challenger.version
            if wins
            else (champion.version if champion is not None else None),
            challenger_version=challenger.version,
            metric=metric,
            challenger_score=challenger_score,
            reference_score=reference_score,
            reference=reference,
            scores={
                name: {k: float(v) for k, v in values.items() if k in REPORTED}
                for name, values in scores.items()
            },
            baselines_note=note,
        ),
        challenger,
        lineage,
    )


def decision_tags(decision: GateDecision, lineage: RunLineage | None = None) -> dict[str, str]:
    """The version tags a decision leaves: decision, reason, compared scores, deciding run."""
    tags = {
        GATE_DECISION_TAG: "promoted" if decision.promoted else "not promoted",
        GATE_REASON_TAG: decision.reason,
        "gate.metric": decision.metric,
        "gate.challenger_score": f"{decision.challenger_score:.6f}",
        "gate.reference": decision.reference,
        "gate.reference_score": f"{decision.reference_score:.6f}",
    }
    if decision.scores:
        tags["gate.scores"] = json.dumps(decision.scores, sort_keys=True)
    if decision.baselines_note:
        tags["gate.baselines"] = decision.baselines_note
    if lineage is not None:
        tags["gate.airflow_run_id"] = lineage.run_id
        if lineage.ti_url:
            tags["gate.airflow_task_instance_url"] = lineage.ti_url
    return tags


def _decide(
    settings: Settings,
    decision: GateDecision,
    challenger: ModelRef,
    lineage: RunLineage | None,
) -> GateDecision:
    """Tag the challenger version with ``decision``, log it with the run link, return it."""
    mlflow_client = client(settings)
    for key, value in decision_tags(decision, lineage).items():
        mlflow_client.set_model_version_tag(
            settings.registered_model_name, str(challenger.version), key, value
        )
    url = run_url_of(settings, challenger.run_id)
    verdict = "promoted" if decision.promoted else "not promoting"
    log.info("%s v%d: %s", verdict, challenger.version, decision.reason)
    if url:
        log.info("MLflow run of v%d: %s", challenger.version, url)
    return replace(decision, run_url=url)
