"""The training stage: train the two-tower on the samples table, evaluate, export, log to MLflow.

``train_two_tower`` is what ``dags/recsys_train.py`` calls. The pieces live next to it:
``config`` (TrainParams, the one source of defaults), ``examples`` (the streamed, cached
samples), ``dataset`` (the tf.data adapter), ``loop`` (losses and the fit loop), ``tracking``
(MLflow bookkeeping); tower scoring is ``tasks.model.scoring``. The evaluation holdout (each
user's last bookmark, EVALUATION.md) is removed from the training stream so the model and the
baselines are scored on items none of them trained on.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.common import StageResult, check_interval, get_logger
from tasks.core.lineage import RunLineage, run_name
from tasks.core.settings import Settings
from tasks.model.evaluate import evaluate_baselines, leave_last_positive_split
from tasks.model.features import (
    BookmarkHistory,
    FeatureSpec,
    config_to_json,
    fit_feature_stats,
    validate_feature_config,
)
from tasks.model.scoring import ItemCatalogue, keras_towers, tower_scores
from tasks.model.training.config import TrainParams
from tasks.model.training.dataset import dataset_from_batches
from tasks.model.training.errors import NonFiniteLossError, TrainingDataError
from tasks.model.training.examples import (
    SampleStream,
    point_in_time_catalogue,
    read_training_inputs,
)
from tasks.model.training.loop import fit_model
from tasks.model.training.tracking import (
    experiment_id,
    log_baseline_chart,
    log_curves,
    log_pyfunc,
    log_training_dataset,
    metric_from_mlflow,
    mlflow_metric_name,
    reusable_run,
    run_url,
)

__all__ = [  # the stage's public face: what the DAG, tests and benches import from here
    "NonFiniteLossError",
    "TrainParams",
    "TrainResult",
    "TrainingDataError",
    "train_two_tower",
]

log = get_logger("train")


@dataclass(frozen=True)
class TrainResult(StageResult):
    """One training run: its MLflow run (and its page in the MLflow UI) and export, metrics
    vs baselines, example counts."""

    run_id: str
    export_dir: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    n_train: int
    n_val: int
    epochs_run: int
    interval_start: datetime
    interval_end: datetime
    reused: bool = False
    run_url: str = ""
    run_name: str = ""


def train_two_tower(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    *,
    params: TrainParams | None = None,
    lineage: RunLineage | None = None,
) -> TrainResult:
    """Train on samples known by ``interval_end``, evaluate vs baselines, log to MLflow.

    The run is named after the model, interval and DAG run, and carries ``lineage``'s tags
    (Airflow dag/run/task/try, task-instance link, git commit) when given. Idempotent: a
    finished run for the same interval and params is returned as is.
    """
    import mlflow

    params = params or TrainParams()
    start, end = check_interval(interval_start, interval_end)
    config = params.features()
    validate_feature_config(config)
    tags = {
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
        "params_fingerprint": params.fingerprint(),
    }
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    previous = reusable_run(settings, tags)
    if previous is not None:
        log.info("reusing finished run %s for %s", previous.info.run_id, tags)
        reused = _result_from_run(previous, start, end, settings)
        log.info("MLflow run: %s", reused.run_url)
        return reused

    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="train-cache-", dir=settings.artifacts_dir))
    try:
        return _train(settings, start, end, params, config, tags, cache_dir, lineage)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _train(
    settings: Settings,
    start: datetime,
    end: datetime,
    params: TrainParams,
    config: list[FeatureSpec],
    tags: dict[str, str],
    cache_dir: Path,
    lineage: RunLineage | None = None,
) -> TrainResult:
    """The body of :func:`train_two_tower`; ``cache_dir`` holds the featurized samples."""
    import keras
    import mlflow

    from tasks.core.db import get_engine
    from tasks.model.two_tower import ModelParams, build_two_tower, export_saved_model

    engine = get_engine(settings.recsys_db_url)
    catalogue, interactions, counts = read_training_inputs(engine, end)
    if counts["positives"] == 0 or counts["negatives"] == 0 and params.loss == "pointwise":
        raise TrainingDataError(
            f"samples before {end} must hold both classes for {params.loss!r}, got {counts}"
        )
    if interactions.empty:
        raise TrainingDataError(f"no mirror_interactions before {end}: nothing to evaluate on")
    split = leave_last_positive_split(interactions, item_ids=catalogue.ids)
    holdout = np.stack(
        [split.user_ids[split.test_user_idx], split.item_ids[split.test_item_idx]], axis=1
    )
    # Item counts from the split's train part, never the replica's live totals: each example
    # gets them as of its cutoff, and the boundaries are fitted on those point-in-time values.
    catalogue, item_counts, item_columns = point_in_time_catalogue(catalogue, split.train, end)
    stats = fit_feature_stats(config, item_columns)
    # Histories and logQ from the split's train part: the holdout items never leak into
    # a training history (not even a negative's, which is cut at the interval end).
    bookmarks = split.train[split.train["label"] == 1]
    pop = bookmarks.groupby("illust_id").size()
    pop = pop if params.logq_correction else pop.iloc[:0]
    stream = SampleStream(
        engine=engine,
        interval_end=end,
        catalogue=catalogue,
        history=BookmarkHistory.from_frame(bookmarks),
        params=params,
        exclude_pairs=holdout,
        item_counts=item_counts,
        logq_ids=pop.index.to_numpy(np.int64),
        logq_values=(params.logq_weight * np.log(pop.to_numpy() / max(pop.sum(), 1))).astype(
            np.float32
        ),
        cache_dir=cache_dir / "samples",
    )

    keras.utils.set_random_seed(params.seed)
    model = build_two_tower(
        config,
        stats,
        ModelParams(
            dim=params.dim,
            hidden=params.hidden,
            dropout=params.dropout,
            l2=params.l2,
            init_scale=params.scale,
            recency=params.recency,
        ),
        item_table=catalogue.features if params.history_items else None,
        history_len=params.history_len,
    )
    run_experiment = experiment_id(settings)
    title = run_name("two_tower", start, end, lineage)
    run_tags = {**tags, **(lineage.as_tags() if lineage is not None else {})}
    with mlflow.start_run(experiment_id=run_experiment, run_name=title, tags=run_tags) as run:
        run_id = run.info.run_id
        url = run_url(settings, run_experiment, run_id)
        log.info("MLflow run %r: %s", title, url)
        mlflow.log_params(params.as_mlflow_params())
        mlflow.log_params(
            {"samples_positives": counts["positives"], "samples_negatives": counts["negatives"]}
        )
        mlflow.log_text(config_to_json(config, stats), "feature_config.json")
        log_training_dataset(
            settings,
            start,
            end,
            counts,
            n_interactions=len(interactions),
            n_items=len(catalogue.ids),
            fingerprint=params.fingerprint(),
        )

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=epoch)

        fit = fit_model(
            model,
            lambda epoch: dataset_from_batches(lambda: stream.batches("train", epoch)),
            lambda epoch: dataset_from_batches(lambda: stream.batches("val", 0)),
            params,
            on_epoch=on_epoch,
        )
        log_curves(fit)
        user_fn, item_fn = keras_towers(model)
        metrics = (
            tower_scores(split, catalogue, user_fn, item_fn, history_len=params.history_len)
            if len(split.test_user_idx)
            else {}
        )
        if any(not np.isfinite(v) for v in metrics.values()):
            raise NonFiniteLossError(f"evaluation produced non-finite metrics {metrics}")
        baselines = evaluate_baselines(split) if len(split.test_user_idx) else {}
        mlflow.log_metrics({mlflow_metric_name(k): v for k, v in metrics.items()})
        for name, values in baselines.items():
            mlflow.log_metrics({f"{name}.{mlflow_metric_name(k)}": v for k, v in values.items()})
        log_baseline_chart(metrics, baselines)
        mlflow.log_metrics(
            {
                "n_train": fit.n_train,
                "n_val": fit.n_val,
                "n_test_users": len(split.test_user_idx),
                "epochs_run": len(fit.train_loss),
                "best_epoch": fit.best_epoch,
            }
        )
        export_root = settings.artifacts_dir / "exports"
        export_root.mkdir(parents=True, exist_ok=True)
        export_dir = export_root / f"{end:%Y%m%dT%H%M%S}-{run_id}"
        export_saved_model(model, export_dir, history_len=params.history_len)
        _check_export(export_dir, catalogue, params.history_len)
        mlflow.log_artifacts(str(export_dir), "saved_model")
        log_pyfunc(export_dir, catalogue, params.history_len)
    result = TrainResult(
        run_id=run_id,
        export_dir=str(export_dir),
        metrics=metrics,
        baselines=baselines,
        n_train=fit.n_train,
        n_val=fit.n_val,
        epochs_run=len(fit.train_loss),
        interval_start=start,
        interval_end=end,
        run_url=url,
        run_name=title,
    )
    log.info(
        "trained run %s: %s (baselines %s), exported %s", run_id, metrics, baselines, export_dir
    )
    log.info("MLflow run: %s", url)
    return result


def _result_from_run(
    run: Any, start: datetime, end: datetime, settings: Settings | None = None
) -> TrainResult:
    """The result of a finished run found by :func:`reusable_run` (``reused=True``)."""
    data = {metric_from_mlflow(k): v for k, v in run.data.metrics.items()}
    metrics = {k: v for k, v in data.items() if k.startswith(("HR@", "NDCG@"))}
    baselines: dict[str, dict[str, float]] = {}
    for key, value in data.items():
        if "." in key:
            name, metric = key.split(".", 1)
            baselines.setdefault(name, {})[metric] = value
    export = run.data.tags.get("export_dir", "")
    return TrainResult(
        run_id=run.info.run_id,
        export_dir=export,
        metrics=metrics,
        baselines=baselines,
        n_train=int(data.get("n_train", 0)),
        n_val=int(data.get("n_val", 0)),
        epochs_run=int(data.get("epochs_run", 0)),
        interval_start=start,
        interval_end=end,
        reused=True,
        run_url=run_url(settings, run.info.experiment_id, run.info.run_id) if settings else "",
        run_name=run.info.run_name or "",
    )


def _check_export(export_dir: Path, catalogue: ItemCatalogue, history_len: int) -> None:
    """Reload the export and make sure it scores a few real items with finite values."""
    import tensorflow as tf

    from tasks.model.two_tower import to_tensors

    loaded = tf.saved_model.load(str(export_dir))
    items = catalogue.gather(catalogue.ids[:8])
    users = {
        "user_id": np.arange(1, len(items["illust_id"]) + 1, dtype=np.int64),
        "history": np.zeros((len(items["illust_id"]), history_len), np.int64),
    }
    score = loaded.signatures["score"](**to_tensors({**users, **items}))["score"].numpy()
    if not np.all(np.isfinite(score)):
        raise NonFiniteLossError(f"exported model gives non-finite scores {score}")
