"""The ranker's training stage: rows of one interval -> DCN-V2 -> metrics -> SavedModel, in MLflow.

``train_ranker`` reads the interval's training rows (:mod:`tasks.model.ranker.rows`),
computes point-in-time features (:mod:`tasks.model.ranker.features`), cuts the latest
``val_share`` of rows (by request time) off as validation, trains, and logs a separate run
in the two-tower's MLflow experiment with AUC, GAUC, logloss and the per-user list metrics
(NDCG@k/HR@k of each user's validation rows ranked by the model) plus the exported
SavedModel (signature ``rank``). Called by ``recsys_train``'s ``train_ranker`` task after
the two-tower, on the same interval.
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
) -> RankerTrainResult:
    """Train the ranker on the interval's rows and log the run to MLflow (see module doc).

    Idempotent: a finished ranker run for the same interval and params is returned as is
    (``reused=True``), as ``train_two_tower`` does.
    """
    import keras
    import mlflow

    from tasks.core.db import get_engine
    from tasks.model.features import fit_feature_stats
    from tasks.model.ranker.features import RankingFeatureBuilder
    from tasks.model.ranker.model import (
        build_ranker,
        dataset,
        export_ranker,
        predict,
        ranker_config_json,
        ranker_feature_config,
    )
    from tasks.model.ranker.rows import (
        read_ranking_frames,
        read_sampled_negatives,
        time_split,
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
    }
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    previous = reusable_run(settings, key_tags)
    if previous is not None:
        log.info("reusing finished ranker run %s for %s", previous.info.run_id, key_tags)
        return _result_from_run(previous, start, end, settings)
    engine = get_engine(settings.recsys_db_url)
    frames = read_ranking_frames(engine, end)
    negatives = read_sampled_negatives(engine, start, end)
    rows = training_rows(frames.interactions, negatives, start, end)
    labels = rows["label"].to_numpy(np.int64)
    if len(rows) == 0 or labels.min() == labels.max():
        raise RankerDataError(
            f"ranker rows in [{start}, {end}) must hold both classes, got {len(rows)} rows "
            f"with {int(labels.sum())} bookmarks"
        )
    is_val = time_split(rows, params.val_share)
    builder = RankingFeatureBuilder(
        frames.interactions,
        frames.illusts,
        frames.follows,
        history_len=params.history_len,
        tag_history_len=params.tag_history_len,
    )
    features = builder.features(rows["user_id"], rows["illust_id"], rows["request_time"])
    train = {k: v[~is_val] for k, v in features.items()}
    val = {k: v[is_val] for k, v in features.items()}
    config = ranker_feature_config(params)
    stats = fit_feature_stats(config, builder.catalogue.features)

    keras.utils.set_random_seed(params.seed)
    model = build_ranker(config, stats, params)
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
    )
    tags = {**key_tags, **(lineage.as_tags() if lineage is not None else {})}
    run_experiment = experiment_id(settings)
    title = run_name(MODEL_NAME, start, end, lineage)
    with mlflow.start_run(experiment_id=run_experiment, run_name=title, tags=tags) as run:
        run_id = run.info.run_id
        url = run_url(settings, run_experiment, run_id)
        log.info("MLflow run %r: %s", title, url)
        mlflow.log_params(params.as_mlflow_params())
        n_sampled = int((rows["source"] == "sampled").sum())
        mlflow.log_params(
            {"rows": len(rows), "rows_bookmarked": int(labels.sum()), "rows_sampled": n_sampled}
        )
        callbacks = [
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=params.patience, restore_best_weights=True
            )
        ]
        history = model.fit(
            dataset(train, labels[~is_val], batch_size=params.batch_size, shuffle_seed=params.seed),
            validation_data=dataset(val, labels[is_val], batch_size=params.batch_size),
            epochs=params.epochs,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself each epoch
            verbose=0,
        )
        for epoch, (loss, val_loss) in enumerate(
            zip(history.history["loss"], history.history["val_loss"], strict=True)
        ):
            mlflow.log_metrics({"train_loss": loss, "val_loss": val_loss}, step=epoch)
        probs = predict(model, val)
        if not np.all(np.isfinite(probs)):
            raise RankerDataError(f"the ranker predicts non-finite values on {len(probs)} rows")
        metrics = evaluate_ranker(val["user_id"], labels[is_val], probs, params.ks)
        mlflow.log_metrics({mlflow_metric_name(k): v for k, v in metrics.items() if np.isfinite(v)})
        epochs_run = len(history.history["loss"])
        mlflow.log_metrics(
            {
                "n_train": int((~is_val).sum()),
                "n_val": int(is_val.sum()),
                "n_sampled": n_sampled,
                "epochs_run": epochs_run,
            }
        )
        mlflow.log_text(ranker_config_json(model), "ranker_config.json")
        export_root = settings.artifacts_dir / "exports"
        export_root.mkdir(parents=True, exist_ok=True)
        export_dir = export_root / f"ranker-{end:%Y%m%dT%H%M%S}-{run_id}"
        export_ranker(model, export_dir)
        _check_export(export_dir, {k: v[:8] for k, v in val.items()})
        mlflow.log_artifacts(str(export_dir), "saved_model")
        mlflow.set_tag("export_dir", str(export_dir))
    log.info("ranker run %s: %s, exported %s", run_id, metrics, export_dir)
    return RankerTrainResult(
        run_id=run_id,
        export_dir=str(export_dir),
        metrics=metrics,
        n_train=int((~is_val).sum()),
        n_val=int(is_val.sum()),
        n_sampled=n_sampled,
        epochs_run=epochs_run,
        interval_start=start,
        interval_end=end,
        run_url=url,
        run_name=title,
    )


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
