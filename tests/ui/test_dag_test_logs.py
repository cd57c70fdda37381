"""Runs made with ``dag.test()`` (the demo, these tests) have task logs the UI can read.

Airflow 3's ``dag.test()`` runs each task in process and only prints its log lines, so the
api-server's log reader found no file and answered "Log file not found on worker 'vm'" for
every task of the demo's runs. ``tests/doubles/dagrun.run_dag`` writes each try's log file
where ``[logging] base_log_folder`` / ``log_filename_template`` put it; this reads it back
through the same ``TaskLogReader`` the UI's Logs tab calls.
"""

from __future__ import annotations

import json
from pathlib import Path


def _ui_log(dag_id: str, run_id: str, task_id: str) -> list[dict]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id)
            .one()
        )
        reader = TaskLogReader()
        lines = list(reader.read_log_stream(ti, ti.try_number, {}))
    return [json.loads(line) for chunk in lines for line in chunk.splitlines() if line.strip()]


def test_a_dag_test_task_log_is_readable_like_the_ui_reads_it(recsys_home: Path) -> None:
    """``recsys_train``'s ``intervals`` with the form's interval: the log the UI shows has the
    task's own INFO line (which interval, and why) and no "not found"."""
    from tests.doubles.dagrun import run_dag, task_log_path

    conf = {
        "interval_start": "2026-10-01T00:00:00+00:00",
        "interval_end": "2026-10-02T00:00:00+00:00",
    }
    outcome = run_dag("recsys_train", conf=conf, task_ids=["intervals"])
    assert outcome.task_states == {"intervals": "success"}

    events = _ui_log("recsys_train", outcome.run_id, "intervals")
    text = "\n".join(str(e.get("event", "")) for e in events)
    assert "Log file not found" not in text and "Could not read" not in text, text
    mine = [e for e in events if "training on" in str(e.get("event", ""))]
    assert len(mine) == 1, text
    assert "2026-10-01" in mine[0]["event"] and "(form params)" in mine[0]["event"], mine
    assert mine[0]["level"] == "info" and mine[0]["logger"].startswith("recsys4pix"), mine
    # the file the reader used is the try's file under base_log_folder
    from airflow.configuration import conf

    class _Ti:
        dag_id, run_id, task_id, map_index, try_number = (
            "recsys_train", outcome.run_id, "intervals", -1, 1,
        )  # fmt: skip

    path = task_log_path(_Ti())
    assert path.is_file()
    assert path.is_relative_to(Path(conf.get("logging", "base_log_folder")).expanduser())
    assert path.name == "attempt=1.log" and f"run_id={outcome.run_id}" in str(path)
