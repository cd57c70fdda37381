"""Run a DAG in process with ``dag.test()`` and read back task states and XComs.

Used by the demo (``scripts/demo.py``) and the end-to-end DAG tests: the real DAG files,
real operators and the real metadata DB, with no scheduler process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@dataclass
class DagRunOutcome:
    """What a test run ended as: run state, each task's state, each task's return value."""

    dag_id: str
    run_id: str
    state: str
    task_states: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "success"

    def failed_tasks(self) -> list[str]:
        return sorted(t for t, s in self.task_states.items() if s in ("failed", "upstream_failed"))


def load_dag(dag_id: str) -> Any:
    """Parse ``dags/`` and return one DAG; import errors are raised, not swallowed."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise ValueError(f"no DAG {dag_id!r} in {DAGS_DIR}; have {sorted(bag.dag_ids)}")
    return dag


def run_dag(
    dag_id: str, *, conf: dict[str, Any] | None = None, logical_date: datetime | None = None
) -> DagRunOutcome:
    """``dag.test()`` one run and collect its task states and ``return_value`` XComs."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = load_dag(dag_id)
    kwargs: dict[str, Any] = {"run_conf": conf or {}}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    dag_run = dag.test(**kwargs)
    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == dag_run.run_id)
            .all()
        )
        rows = (
            session.query(XComModel)
            .filter(
                XComModel.dag_id == dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.key == "return_value",
            )
            .all()
        )
        return DagRunOutcome(
            dag_id=dag_id,
            run_id=dag_run.run_id,
            state=str(dag_run.state),
            task_states={ti.task_id: str(ti.state) for ti in tis},
            xcoms={row.task_id: row.value for row in rows},
        )
