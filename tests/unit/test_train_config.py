"""Training defaults have one source: TrainParams (tasks/model/training/config.py).

The recsys_train DAG's trigger form must offer exactly those defaults, and the config module
must stay cheap enough for the DAG to read it at parse time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.model.training.config import LOSSES, TRAIN_DEFAULTS, TrainParams

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_dag_params():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "recsys_train.py"))
    assert bag.import_errors == {}
    return bag.get_dag("recsys_train").params


def test_defaults_are_the_product_defaults() -> None:
    """What the DAG has always trained with: in-batch softmax, 10 epochs."""
    assert TrainParams() == TRAIN_DEFAULTS
    assert (TRAIN_DEFAULTS.loss, TRAIN_DEFAULTS.epochs) == ("inbatch_softmax", 10)
    assert set(LOSSES) == {"inbatch_softmax", "pointwise"}


def test_dag_param_defaults_equal_train_params(train_dag_params) -> None:  # type: ignore[no-untyped-def]
    assert train_dag_params["epochs"] == TrainParams().epochs == 10
    assert train_dag_params["loss"] == TrainParams().loss == "inbatch_softmax"
    assert train_dag_params.get_param("loss").schema["enum"] == list(LOSSES)
    # The train task builds TrainParams from those two Params: untouched, that is TrainParams().
    built = TrainParams(epochs=train_dag_params["epochs"], loss=train_dag_params["loss"])
    assert built.fingerprint() == TrainParams().fingerprint()


def test_config_imports_no_heavy_library() -> None:
    """The DAG imports config at parse time: no numpy/pandas/TensorFlow behind it."""
    code = (
        "import sys, tasks.model.training.config; "
        "print(sorted(m for m in ('numpy', 'pandas', 'sqlalchemy', 'tensorflow', 'mlflow') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
