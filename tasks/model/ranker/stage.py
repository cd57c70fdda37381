"""The ranker's training stage: candidate sets -> DCN-V2 -> metrics -> SavedModel, in MLflow.

``train_ranker`` reads the mirror before the interval end. With the recall ``channels``
handed in (the DAG passes ``tasks.serving.recall`` and the just-trained two-tower's export for
the ANN channel) the rows are candidate sets built exactly like the API's pool and the gate's
holdout sets (:func:`tasks.model.ranker.candidates.training_sets`: the gate's holdout removed,
``candidate_tiers`` earlier positives per user as point-in-time cutoffs, real recall evidence),
optionally plus the interval's shown rows and sampled negatives
(:mod:`tasks.model.ranker.rows`, cut before each user's holdout positive); ``shown_rows="auto"``
fits both and keeps the one with the better validation NDCG@10 on a seeded ``val_share`` of
the users (their sets as the gate scores them: positives recall missed count as misses).
Without channels the shown rows alone train, with the latest ``val_share`` as validation.
Early stopping on the validation loss. Logs a separate run in the two-tower's MLflow
experiment with AUC, GAUC, logloss, the per-set list metrics, the served-like validation
NDCG@k of the ranked and recall-order lists, and the exported SavedModel (signature ``rank``).
Called by ``recsys_train``'s ``train_ranker`` task after the two-tower, on the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.common import StageResult, check_interval, get_logger
from tasks.core.lineage import RunLineage, run_name
from tasks.core.settings import Settings
from tasks.model.evaluate import auc, gauc, grouped_list_metrics, logloss
from tasks.model.ranker.candidates import RecallChannels
from tasks.model.ranker.config import RankerParams

log = get_logger("ranker")

MODEL_NAME = "ranker"


class RankerDataError(ValueError):
    """The interval's rows cannot train a ranker (none, or a single class)."""


@dataclass(frozen=True)
class RankerTrainResult(StageResult):
    """One ranker training run: its MLflow run, export, validation metrics and row counts."""

    run_id: str
    export_dir: str
    metrics: dict[str, float]
    n_train: int
    n_val: int
    n_sampled: int
    epochs_run: int
    interval_start: datetime
    interval_end: datetime
    run_url: str = ""
    run_name: str = ""
    reused: bool = False


def evaluate_ranker(
    user_ids: np.ndarray, labels: np.ndarray, probs: np.ndarray, ks: tuple[int, ...] = (10,)
) -> dict[str, float]:
    """AUC, GAUC, logloss and per-user list metrics of predicted probabilities."""
    out = {
        "AUC": auc(labels, probs),
        "GAUC": gauc(user_ids, labels, probs),
        "logloss": logloss(labels, probs),
    }
    for k in ks:
        out.update(grouped_list_metrics(user_ids, labels, probs, k))
    return out


def train_ranker(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    *,
    params: RankerParams | None = None,
    lineage: RunLineage | None = None,
    channels: RecallChannels | None = None,
    ann_export_dir: str | None = None,
) -> RankerTrainResult:
    """Train the ranker on the interval's rows and log the run to MLflow (see module doc).

    ``channels`` (``tasks.serving.recall``, passed in by the DAG) turns on the candidate-set
    rows; ``ann_export_dir`` (the just-trained two-tower's SavedModel) adds their ANN channel.
    Without ``channels`` only the shown rows and sampled negatives train (time-split).

    Idempotent: a finished ranker run for the same interval and params is returned as is
    (``reused=True``), as ``train_two_tower`` does.
    """
    import mlflow

    from tasks.core.db import get_engine
    from tasks.model.features import fit_feature_stats
    from tasks.model.ranker.candidates import (
        export_ann,
        holdout_cutoffs,
        list_ndcg,
        training_sets,
    )
    from tasks.model.ranker.features import RankingFeatureBuilder
    from tasks.model.ranker.model import (
        export_ranker,
        ranker_config_json,
        ranker_feature_config,
    )
    from tasks.model.ranker.rows import (
        before_holdout,
        read_ranking_frames,
        read_sampled_negatives,
        training_rows,
    )
    from tasks.model.training.tracking import (
        experiment_id,
        mlflow_metric_name,
        reusable_run,
        run_url,
    )

    params = params or RankerParams()
    start, end = check_interval(interval_start, interval_end)
    key_tags = {
        "model": MODEL_NAME,
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
        "params_fingerprint": params.fingerprint(),
        "training_rows": "shown"
        if channels is None
        else ("candidates+ann" if ann_export_dir else "candidates"),
    }
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    previous = reusable_run(settings, key_tags)
    if previous is not None:
        log.info("reusing finished ranker run %s for %s", previous.info.run_id, key_tags)
        return _result_from_run(previous, start, end, settings)
    engine = get_engine(settings.recsys_db_url)
    frames = read_ranking_frames(engine, end)
    rows = None  # the shown rows: read only when a variant trains on them
    if channels is None or params.shown_rows != "no":
        negatives = read_sampled_negatives(engine, start, end)
        rows = training_rows(frames.interactions, negatives, start, end)
        rows = before_holdout(rows, holdout_cutoffs(frames.interactions, frames.illusts))
    builder = RankingFeatureBuilder(
        frames.interactions,
        frames.illusts,
        frames.follows,
        history_len=params.history_len,
        tag_history_len=params.tag_history_len,
    )
    config = ranker_feature_config(params)
    stats = fit_feature_stats(config, builder.catalogue.features)
    if channels is None:
        data = _shown_data(rows, builder, params)
    else:
        ann = None
        if ann_export_dir:
            ann = export_ann(ann_export_dir, builder.catalogue)
        if frames.interactions.empty:
            raise RankerDataError(
                f"ranker rows in [{start}, {end}) must hold both classes, got no interactions"
            )
        sets = training_sets(
            frames.interactions,
            frames.illusts,
            frames.follows,
            channels,
            ann=ann,
            tiers=params.candidate_tiers,
            pool=params.candidate_pool,
            negatives=params.candidate_negatives,
            history_len=params.history_len,
            tag_history_len=params.tag_history_len,
            seed=params.seed,
            append_missed=params.append_missed,
        )
        data = _candidate_data(sets, rows, builder, params)
    tags = {**key_tags, **(lineage.as_tags() if lineage is not None else {})}
    run_experiment = experiment_id(settings)
    title = run_name(MODEL_NAME, start, end, lineage)
    with mlflow.start_run(experiment_id=run_experiment, run_name=title, tags=tags) as run:
        run_id = run.info.run_id
        url = run_url(settings, run_experiment, run_id)
        log.info("MLflow run %r: %s", title, url)
        mlflow.log_params(params.as_mlflow_params())
        fitted = {variant: _fit(params, config, stats, data, variant) for variant in data.variants}
        chosen = max(fitted, key=lambda v: (fitted[v].score, v == data.variants[0]))
        model, history, probs = fitted[chosen].model, fitted[chosen].history, fitted[chosen].probs
        train_rows = data.train_rows(chosen)
        n_sampled = int(data.sources(chosen).count("sampled"))
        mlflow.log_params(
            {
                "rows": int(len(train_rows[1]) + len(data.val_labels)),
                "rows_bookmarked": int(train_rows[1].sum() + data.val_labels.sum()),
                "rows_sampled": n_sampled,
                "rows_variant": chosen,
            }
        )
        for epoch, (loss, val_loss) in enumerate(
            zip(history.history["loss"], history.history["val_loss"], strict=True)
        ):
            mlflow.log_metrics({"train_loss": loss, "val_loss": val_loss}, step=epoch)
        metrics = evaluate_ranker(data.val_groups, data.val_labels, probs, params.ks)
        if data.val_sets is not None:
            for k in params.ks:
                metrics[f"val_served_NDCG@{k}"] = list_ndcg(data.val_sets, probs, k)
                metrics[f"val_recall_order_NDCG@{k}"] = list_ndcg(
                    data.val_sets, data.val_sets.recall_order_scores(), k
                )
            for variant, fit in fitted.items():
                mlflow.log_metric(f"val_served_score_{variant}", fit.score)
        mlflow.log_metrics({mlflow_metric_name(k): v for k, v in metrics.items() if np.isfinite(v)})
        epochs_run = len(history.history["loss"])
        n_train, n_val = int(len(train_rows[1])), int(len(data.val_labels))
        mlflow.log_metrics(
            {"n_train": n_train, "n_val": n_val, "n_sampled": n_sampled, "epochs_run": epochs_run}
        )
        mlflow.log_text(ranker_config_json(model), "ranker_config.json")
        export_root = settings.artifacts_dir / "exports"
        export_root.mkdir(parents=True, exist_ok=True)
        export_dir = export_root / f"ranker-{end:%Y%m%dT%H%M%S}-{run_id}"
        export_ranker(model, export_dir)
        _check_export(export_dir, {k: v[:8] for k, v in data.val.items()})
        mlflow.log_artifacts(str(export_dir), "saved_model")
        mlflow.set_tag("export_dir", str(export_dir))
    log.info("ranker run %s: %s, exported %s", run_id, metrics, export_dir)
    return RankerTrainResult(
        run_id=run_id,
        export_dir=str(export_dir),
        metrics=metrics,
        n_train=n_train,
        n_val=n_val,
        n_sampled=n_sampled,
        epochs_run=epochs_run,
        interval_start=start,
        interval_end=end,
        run_url=url,
        run_name=title,
    )


#: The parts each training variant concatenates (see ``RankerData``).
VARIANT_PARTS: dict[str, tuple[str, ...]] = {
    "shown": ("shown",),
    "no": ("candidates",),
    "yes": ("candidates", "shown"),
}


@dataclass(frozen=True)
class RankerData:
    """Featurised training and validation rows; ``variants`` name the training sets to try
    (``"shown"``: shown rows only; ``"no"``/``"yes"``: candidate rows without/with them)."""

    variants: tuple[str, ...]
    parts: dict[str, tuple[dict[str, np.ndarray], np.ndarray, list[str]]]
    val: dict[str, np.ndarray]
    val_labels: np.ndarray
    val_groups: np.ndarray
    val_sets: Any = None  # CandidateSets of the validation users (candidate mode)

    def train_rows(self, variant: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        picked = [self.parts[n] for n in VARIANT_PARTS[variant]]
        features = {k: np.concatenate([p[0][k] for p in picked]) for k in picked[0][0]}
        return features, np.concatenate([p[1] for p in picked])

    def sources(self, variant: str) -> list[str]:
        return [src for n in VARIANT_PARTS[variant] for src in self.parts[n][2]]


@dataclass(frozen=True)
class _Fitted:
    model: Any
    history: Any
    probs: np.ndarray
    score: float


def _check_classes(labels: np.ndarray, what: str) -> None:
    if len(labels) == 0 or labels.min() == labels.max():
        raise RankerDataError(
            f"ranker {what} must hold both classes, got {len(labels)} rows "
            f"with {int(labels.sum())} bookmarks"
        )


def _shown_data(rows: Any, builder: Any, params: RankerParams) -> RankerData:
    """Shown rows + sampled negatives only; the latest ``val_share`` (by time) validates."""
    from tasks.model.ranker.rows import time_split

    labels = rows["label"].to_numpy(np.int64)
    _check_classes(labels, "rows of the interval")
    is_val = time_split(rows, params.val_share)
    features = builder.features(rows["user_id"], rows["illust_id"], rows["request_time"])
    sources = rows["source"].astype(str).to_numpy()
    train = {k: v[~is_val] for k, v in features.items()}
    val = {k: v[is_val] for k, v in features.items()}
    return RankerData(
        variants=("shown",),
        parts={"shown": (train, labels[~is_val], sources[~is_val].tolist())},
        val=val,
        val_labels=labels[is_val],
        val_groups=val["user_id"],
    )


def _candidate_data(sets: Any, rows: Any, builder: Any, params: RankerParams) -> RankerData:
    """Candidate-set rows (+ the shown rows, per ``params.shown_rows``); a seeded
    ``val_share`` of the candidate users validates (their shown rows are dropped)."""
    _check_classes(sets.labels, "candidate rows")
    users = np.unique(sets.features["user_id"])
    rng = np.random.default_rng(params.seed)
    n_val = max(1, int(round(len(users) * params.val_share)))
    val_users = rng.choice(users, size=min(n_val, len(users) - 1), replace=False)
    is_val = np.isin(sets.features["user_id"], val_users)
    train_sets, val_sets = sets.subset(~is_val), sets.subset(is_val)
    _check_classes(train_sets.labels, "training candidate rows")
    parts = {
        "candidates": (
            train_sets.features,
            train_sets.labels,
            ["candidates"] * len(train_sets.labels),
        )
    }
    variants = {"auto": ("no", "yes"), "no": ("no",), "yes": ("yes",)}[params.shown_rows]
    if "yes" in variants:
        shown = rows[~np.isin(rows["user_id"].to_numpy(np.int64), val_users)]
        features = builder.features(shown["user_id"], shown["illust_id"], shown["request_time"])
        parts["shown"] = (
            features,
            shown["label"].to_numpy(np.int64),
            shown["source"].astype(str).tolist(),
        )
        if not len(shown):
            variants = ("no",)
    log.info(
        "ranker candidate rows: %d train sets (%d rows), %d validation sets (%d rows); variants %s",
        train_sets.n_sets,
        len(train_sets.labels),
        val_sets.n_sets,
        len(val_sets.labels),
        variants,
    )
    return RankerData(
        variants=variants,
        parts=parts,
        val=val_sets.features,
        val_labels=val_sets.labels,
        val_groups=val_sets.set_ids,
        val_sets=val_sets,
    )


def _fit(params: RankerParams, config: Any, stats: Any, data: RankerData, variant: str) -> _Fitted:
    """One fresh ranker on ``variant``'s training rows, early-stopped on the validation loss;
    ``score`` = the validation sets' served-like NDCG (candidate mode) or -logloss."""
    import keras

    from tasks.model.ranker.candidates import list_ndcg
    from tasks.model.ranker.model import build_ranker, dataset, predict

    features, labels = data.train_rows(variant)
    keras.utils.set_random_seed(params.seed)
    model = build_ranker(config, stats, params)
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
    )
    history = model.fit(
        dataset(features, labels, batch_size=params.batch_size, shuffle_seed=params.seed),
        validation_data=dataset(data.val, data.val_labels, batch_size=params.batch_size),
        epochs=params.epochs,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=params.patience, restore_best_weights=True
            )
        ],
        shuffle=False,  # the dataset shuffles itself each epoch
        verbose=0,
    )
    probs = predict(model, data.val)
    if not np.all(np.isfinite(probs)):
        raise RankerDataError(f"the ranker predicts non-finite values on {len(probs)} rows")
    if data.val_sets is not None:
        score = list_ndcg(data.val_sets, probs, params.ks[0])
    else:
        score = -logloss(data.val_labels, probs)
    log.info(
        "ranker variant %r: %d training rows, validation score %.4f", variant, len(labels), score
    )
    return _Fitted(model, history, probs, float(score))


def _result_from_run(
    run: Any, start: datetime, end: datetime, settings: Settings
) -> RankerTrainResult:
    """The result of a finished run found by ``reusable_run`` (``reused=True``)."""
    from tasks.model.training.tracking import metric_from_mlflow, run_url

    data = {metric_from_mlflow(k): v for k, v in run.data.metrics.items()}
    metrics = {k: v for k, v in data.items() if k in ("AUC", "GAUC", "logloss") or "@" in k}
    return RankerTrainResult(
        run_id=run.info.run_id,
        export_dir=run.data.tags.get("export_dir", ""),
        metrics=metrics,
        n_train=int(data.get("n_train", 0)),
        n_val=int(data.get("n_val", 0)),
        n_sampled=int(data.get("n_sampled", 0)),
        epochs_run=int(data.get("epochs_run", 0)),
        interval_start=start,
        interval_end=end,
        run_url=run_url(settings, run.info.experiment_id, run.info.run_id),
        run_name=run.info.run_name or "",
        reused=True,
    )


def _check_export(export_dir: Path, features: dict[str, Any]) -> None:
    """Reload the export and make sure ``rank`` answers probabilities for real rows."""
    import tensorflow as tf

    from tasks.model.ranker.model import SIGNATURE, to_tensors

    loaded = tf.saved_model.load(str(export_dir))
    score = loaded.signatures[SIGNATURE](**to_tensors(features))["score"].numpy()
    if not (np.all(np.isfinite(score)) and np.all((score >= 0) & (score <= 1))):
        raise RankerDataError(f"exported ranker gives scores outside [0, 1]: {score}")


__all__ = [
    "RankerDataError",
    "RankerParams",
    "RankerTrainResult",
    "evaluate_ranker",
    "train_ranker",
]
