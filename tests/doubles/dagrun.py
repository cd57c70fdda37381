"""Run a DAG in process with ``dag.test()`` and read back task states and XComs.

Used by the demo (``scripts/demo.py``) and the end-to-end DAG tests: the real DAG files,
real operators and the real metadata DB, with no scheduler process.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
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


#: Airflow's own loggers during ``dag.test()``: DagBag filling, DAG-run bookkeeping, the
#: in-process execution API, the task runner's ``::group::``/XCom lines. At WARNING they keep
#: what goes wrong; the tasks' own log lines (``recsys4pix.*``, library warnings, the
#: operator's "Done. Returned value was") still reach the log.
PLUMBING_LOGGERS: tuple[str, ...] = (
    "airflow.api_fastapi",
    "airflow.dag_processing",
    "airflow.models",
    "airflow.sdk",
    "airflow.serialization",
    "airflow.settings",
    "airflow.configuration",
    "plugins.connections",
    "task",
)


@contextmanager
def quiet_plumbing(level: int = logging.WARNING) -> Iterator[None]:
    """Airflow's own loggers at ``level`` while ``dag.test()`` runs (restored after)."""
    saved = {name: logging.getLogger(name).level for name in PLUMBING_LOGGERS}
    for name in PLUMBING_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # Airflow's structlog loggers filter by their own per-namespace table (what
    # ``[logging] namespace_levels`` fills at start-up), not by stdlib levels.
    try:
        from airflow._shared.logging.structlog import PER_LOGGER_LEVELS
    except ImportError:  # another Airflow layout: stdlib levels only
        PER_LOGGER_LEVELS = {}  # noqa: N806
    structlog_saved = {n: PER_LOGGER_LEVELS.get(n) for n in PLUMBING_LOGGERS}
    for name in PLUMBING_LOGGERS:
        PER_LOGGER_LEVELS[name] = level
    try:
        yield
    finally:
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)
        for name, old_level in structlog_saved.items():
            if old_level is None:
                PER_LOGGER_LEVELS.pop(name, None)
            else:
                PER_LOGGER_LEVELS[name] = old_level


class _JsonLinesHandler(logging.Handler):
    """Stdlib records as the JSON lines Airflow's task-log reader parses."""

    def __init__(self, stream: Any) -> None:
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        import json
        from datetime import UTC

        try:
            event = record.getMessage()
            if record.exc_info:
                event += "\n" + logging.Formatter().formatException(record.exc_info)
            line = {
                "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "event": event,
                "logger": record.name,
            }
            self.stream.write(json.dumps(line, default=str) + "\n")
            self.stream.flush()
        except Exception:  # a log line must never fail the task
            self.handleError(record)


def _structlog_tee(stream: Any) -> Any:
    """A structlog processor writing each event (Airflow's own task loggers) as a JSON line."""
    import json
    import traceback

    def tee(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        try:
            event = str(event_dict.get("event", ""))
            exc = event_dict.get("exc_info")
            if exc:
                if exc is True:
                    exc = sys.exc_info()
                if isinstance(exc, BaseException):
                    exc = (type(exc), exc, exc.__traceback__)
                if isinstance(exc, tuple) and exc[0] is not None:
                    event += "\n" + "".join(traceback.format_exception(*exc))
            line = {
                "timestamp": str(event_dict.get("timestamp") or datetime.now().astimezone()),
                "level": str(event_dict.get("level") or method_name),
                "event": event,
                "logger": str(event_dict.get("logger") or ""),
            }
            stream.write(json.dumps(line, default=str) + "\n")
            stream.flush()
        except Exception:  # noqa: S110 - a log line must never fail the task
            pass
        return event_dict

    return tee


def task_log_path(ti: Any) -> Path:
    """Where Airflow's log reader (the UI's Logs tab) looks for a finished task's log:
    ``[logging] base_log_folder`` / ``log_filename_template`` rendered for this try."""
    import jinja2
    from airflow.configuration import conf

    template = conf.get("logging", "log_filename_template")
    relative = jinja2.Template(template).render(ti=ti, try_number=ti.try_number)
    return Path(conf.get("logging", "base_log_folder")).expanduser() / relative


@contextmanager
def task_log_files() -> Iterator[None]:
    """Each task ``dag.test()`` runs also writes its log file where the api-server reads it.

    ``dag.test()`` runs tasks in process and only prints their logs, so the UI answered
    "Log file not found on worker" for every run it made. While this is active, each task's
    log lines (stdlib and Airflow's structlog loggers) go to the file of its try as well.
    """
    import structlog
    from airflow.sdk.execution_time import supervisor

    original = supervisor.run_task_in_process

    def run_and_log(ti: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        path = task_log_path(ti)
        path.parent.mkdir(parents=True, exist_ok=True)
        processors = structlog.get_config()["processors"]
        with path.open("a", encoding="utf-8") as stream:
            handler = _JsonLinesHandler(stream)
            tee = _structlog_tee(stream)
            root = logging.getLogger()
            root.addHandler(handler)
            # in place, before the renderer: loggers already bound share this list
            processors.insert(max(len(processors) - 1, 0), tee)
            try:
                return original(ti, task, *args, **kwargs)
            finally:
                with suppress(ValueError):
                    processors.remove(tee)
                root.removeHandler(handler)

    supervisor.run_task_in_process = run_and_log
    try:
        yield
    finally:
        supervisor.run_task_in_process = original


def run_dag(
    dag_id: str,
    *,
    conf: dict[str, Any] | None = None,
    logical_date: datetime | None = None,
    quiet: bool = True,
    task_ids: list[str] | None = None,
) -> DagRunOutcome:
    """``dag.test()`` one run and collect its task states and ``return_value`` XComs.

    ``quiet`` (default) keeps Airflow's plumbing loggers at WARNING during the run;
    ``task_ids`` runs only those tasks (exact ids, no upstream)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    kwargs: dict[str, Any] = {"run_conf": conf or {}}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    with quiet_plumbing() if quiet else nullcontext(), task_log_files():
        dag = load_dag(dag_id)
        if task_ids:
            dag = dag.partial_subset(task_ids=list(task_ids), include_upstream=False)
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


@contextmanager
def fds_to(path: Path, *, append: bool = False) -> Iterator[None]:
    """Send fd 1 and 2 (Airflow's and TensorFlow's C-level chatter) to ``path`` for a while."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a" if append else "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
