"""MLflow bookkeeping of a training run: the experiment, run reuse, links, charts, the
training dataset and the pyfunc."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.settings import Settings
from tasks.model.scoring import ItemCatalogue
from tasks.model.training.loop import FitHistory

EXPERIMENT_NAME = "recsys4pix-two-tower"
# MLflow 3 opens experiments without this tag on its GenAI page; the value MLflow's own UI
# uses for "machine learning" experiments (mlflow/server/js ExperimentKind enum).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
BASELINE_CHART = "model_vs_baselines.png"
CHART_METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def mlflow_metric_name(name: str) -> str:
    """MLflow metric keys cannot hold '@': ``HR@10`` is logged as ``HR_at_10``."""
    return name.replace("@", "_at_")


def metric_from_mlflow(name: str) -> str:
    """The inverse of :func:`mlflow_metric_name`."""
    return name.replace("_at_", "@")


def experiment_id(settings: Settings) -> str:
    """The training experiment's id, created (with the artifact root) on first use and
    typed for model development (an older untyped experiment gets the tag too)."""
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        return experiment.experiment_id
    return client.create_experiment(
        EXPERIMENT_NAME,
        artifact_location=settings.mlflow_artifact_root,
        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
    )


def run_url(settings: Settings, experiment: str, run_id: str) -> str:
    """The run's page in the MLflow UI (``settings.mlflow_ui_url``)."""
    base = settings.mlflow_ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def reusable_run(settings: Settings, tags: Mapping[str, str]) -> Any | None:
    """A finished run with the same data interval and params (idempotent re-run)."""
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [experiment_id(settings)], filter_string=query + " and attributes.status = 'FINISHED'"
    )
    return runs[0] if runs else None


def log_curves(fit: FitHistory) -> None:
    """Log the train/validation loss per epoch as ``learning_curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    figure, axis = plt.subplots(figsize=(5, 3.5))
    epochs = np.arange(len(fit.train_loss))
    axis.plot(epochs, fit.train_loss, marker="o", label="train loss")
    axis.plot(epochs, fit.val_loss, marker="o", label="validation loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    mlflow.log_figure(figure, "learning_curves.png")
    plt.close(figure)


def log_baseline_chart(
    metrics: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]]
) -> None:
    """Log a grouped bar chart of the model vs each baseline on HR/NDCG@10/20
    (``model_vs_baselines.png``); nothing when there was no holdout to score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    names = [m for m in CHART_METRICS if m in metrics]
    if not names:
        return
    series = {"two_tower": metrics, **baselines}
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(7, 4))
    positions = np.arange(len(names))
    for k, (label, values) in enumerate(series.items()):
        heights = [float(values.get(m, np.nan)) for m in names]
        bars = axis.bar(positions + k * width - 0.4 + width / 2, heights, width, label=label)
        axis.bar_label(bars, fmt="%.2f", fontsize=6)
    axis.set_xticks(positions, names)
    axis.set_ylabel("score on the holdout (each user's last bookmark)")
    axis.set_title("two-tower vs baselines")
    axis.legend(fontsize=8)
    figure.tight_layout()
    mlflow.log_figure(figure, BASELINE_CHART)
    plt.close(figure)


def log_training_dataset(
    settings: Settings,
    start: Any,
    end: Any,
    counts: Mapping[str, int],
    *,
    n_interactions: int,
    n_items: int,
    fingerprint: str,
) -> None:
    """Log the training data as an MLflow dataset input (metadata only: the samples stay in
    the recsys DB): source = the ``samples`` table and the interval, profile = row counts."""
    import mlflow
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema
    from sqlalchemy.engine import make_url

    class RecsysTableSource(DatasetSource):
        """A table of the recsys DB, read for one data interval."""

        def __init__(self, url: str, table: str, interval_start: str, interval_end: str):
            self.url, self.table = url, table
            self.interval_start, self.interval_end = interval_start, interval_end

        @staticmethod
        def _get_source_type() -> str:
            return "recsys_db"

        def load(self) -> Any:
            raise NotImplementedError("read the samples table through tasks.model.training")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> RecsysTableSource:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {
                "url": self.url,
                "table": self.table,
                "interval_start": self.interval_start,
                "interval_end": self.interval_end,
            }

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> RecsysTableSource:
            return cls(**source_dict)

    profile = {
        "num_rows": int(counts.get("positives", 0)) + int(counts.get("negatives", 0)),
        "positives": int(counts.get("positives", 0)),
        "negatives": int(counts.get("negatives", 0)),
        "interactions_before_end": int(n_interactions),
        "catalogue_items": int(n_items),
    }

    class SamplesDataset(MetaDataset):
        """Metadata of the samples a run trained on, with row counts as its profile."""

        @property
        def profile(self) -> Any:
            return profile

        def to_dict(self) -> dict[str, str]:
            import json

            return {**super().to_dict(), "profile": json.dumps(profile)}

    iso = [v.isoformat() if hasattr(v, "isoformat") else str(v) for v in (start, end)]
    source = RecsysTableSource(
        make_url(settings.recsys_db_url).render_as_string(hide_password=True),
        "samples",
        *iso,
    )
    schema = Schema(
        [
            ColSpec(DataType.long, "user_id"),
            ColSpec(DataType.long, "illust_id"),
            ColSpec(DataType.integer, "label"),
            ColSpec(DataType.string, "source"),
        ]
    )
    dataset = SamplesDataset(
        source,
        name=f"samples {iso[0]}..{iso[1]}",
        digest=f"{fingerprint[:8]}-{profile['num_rows']}",
        schema=schema,
    )
    mlflow.log_input(dataset, context="training")


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc, from the installed versions."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "tensorflow", "numpy", "pandas")]


def log_pyfunc(export_dir: Path, catalogue: ItemCatalogue, history_len: int) -> None:
    """Log an MLflow pyfunc that scores (user, item) rows with the SavedModel artifact."""
    import mlflow

    from tasks.model.pyfunc import example_frame, make_pyfunc_model

    example = example_frame(catalogue.gather(catalogue.ids[:2]), history_len=history_len)
    mlflow.pyfunc.log_model(
        name="model",
        python_model=make_pyfunc_model(history_len),
        artifacts={"saved_model": str(export_dir)},
        input_example=example,
        # Declared rather than inferred: inference re-imports the model in a subprocess.
        pip_requirements=pip_requirements(),
    )
    mlflow.set_tag("export_dir", str(export_dir))
