"""MLflow bookkeeping of a training run: the experiment, run reuse, curves and the pyfunc."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.settings import Settings
from tasks.model.scoring import ItemCatalogue
from tasks.model.training.loop import FitHistory

EXPERIMENT_NAME = "recsys4pix-two-tower"


def mlflow_metric_name(name: str) -> str:
    """MLflow metric keys cannot hold '@': ``HR@10`` is logged as ``HR_at_10``."""
    return name.replace("@", "_at_")


def metric_from_mlflow(name: str) -> str:
    """The inverse of :func:`mlflow_metric_name`."""
    return name.replace("_at_", "@")


def experiment_id(settings: Settings) -> str:
    """The training experiment's id, created (with the artifact root) on first use."""
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(
        EXPERIMENT_NAME, artifact_location=settings.mlflow_artifact_root
    )


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
