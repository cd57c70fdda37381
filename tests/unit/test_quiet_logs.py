"""Third-party chatter reaches the task log at its real level, not as stderr (issue 13).

Airflow shows every stderr line of a task as an ERROR line; a successful ``train`` had 10 of
them (TensorFlow, MLflow, tqdm). A task process imports ``plugins.dag_defaults`` (through its
DAG file) before the task body imports those libraries: after that, MLflow tracking and tqdm
write nothing to stderr and library warnings are WARNING log records. (TensorFlow's C++
start-up lines, written before absl's log init, ignore ``TF_CPP_MIN_LOG_LEVEL``: not covered.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, sys, warnings
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
import plugins.dag_defaults  # what a task process imports first
import mlflow
mlflow.set_tracking_uri("sqlite:///{db}")
mlflow.set_experiment("quiet")
with mlflow.start_run():
    mlflow.log_metric("loss", 1.0)
print("sum", 1 + 2)
from tqdm import tqdm
for _ in tqdm(range(3)):
    pass
warnings.warn("a library deprecation", DeprecationWarning)
"""


def test_mlflow_tqdm_and_warnings_write_nothing_to_stderr(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT.format(db=tmp_path / "mlflow.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sum 3" in done.stdout
    assert done.stderr.strip() == "", f"stderr (ERROR lines in an Airflow task log):\n{done.stderr}"
    # the warning is a py.warnings log record at WARNING level (Airflow's structlog renders it)
    assert "py.warnings" in done.stdout
    [line] = [ln for ln in done.stdout.splitlines() if "a library deprecation" in ln]
    assert "warning" in line.lower()
