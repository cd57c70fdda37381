"""Where a pipeline result came from: the Airflow task try and the code that produced it.

``RunLineage`` is plain data (no Airflow import): ``plugins.lineage.lineage_from_context``
builds it inside a running task, stages take it as an optional ``lineage=`` argument and
write ``as_tags()`` on their MLflow runs and model versions, so an MLflow page links back
to the Airflow task instance and the commit, while the task log and XCom link forward to
the MLflow run.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tasks.core.settings import REPO_ROOT

UNKNOWN_COMMIT = "unknown"
MANUAL = "manual"


def git_commit(root: Path = REPO_ROOT) -> str:
    """``RECSYS_GIT_COMMIT`` if set (images without .git), else ``git rev-parse HEAD`` at
    ``root``, else ``"unknown"``."""
    pinned = os.environ.get("RECSYS_GIT_COMMIT")
    if pinned:
        return pinned.strip()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT
    commit = out.stdout.strip()
    return commit or UNKNOWN_COMMIT


@dataclass(frozen=True)
class RunLineage:
    """One Airflow task try (and the code version) that produced an MLflow run or version."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    interval_start: str | None = None
    interval_end: str | None = None
    ti_url: str = ""
    git_commit: str = UNKNOWN_COMMIT

    def as_tags(self) -> dict[str, str]:
        """MLflow tags: ``airflow.*`` for the task try, ``recsys.git_commit`` for the code."""
        tags = {
            "airflow.dag_id": self.dag_id,
            "airflow.run_id": self.run_id,
            "airflow.task_id": self.task_id,
            "airflow.try_number": str(self.try_number),
            "airflow.data_interval_start": self.interval_start or "",
            "airflow.data_interval_end": self.interval_end or "",
            "airflow.task_instance_url": self.ti_url,
            "recsys.git_commit": self.git_commit,
        }
        return {k: v for k, v in tags.items() if v != ""}


def run_name(model: str, start: object, end: object, lineage: RunLineage | None = None) -> str:
    """A readable, unique-per-DAG-run MLflow run name: ``two_tower <start>..<end> <dag run>``.

    Without lineage (a call from a shell or a test) the last part is ``manual``.
    """

    def short(value: object) -> str:
        text = value.isoformat() if hasattr(value, "isoformat") else str(value)
        return text.replace("T00:00:00", "")

    origin = lineage.run_id if lineage is not None else MANUAL
    return f"{model} {short(start)}..{short(end)} {origin}"
