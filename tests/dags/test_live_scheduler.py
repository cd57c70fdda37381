"""The DAGs under a real Airflow (``airflow standalone``: scheduler, API server, DAG
processor, triggerer, LocalExecutor), not ``dag.test()``.

What only a live scheduler shows: ``airflow backfill create`` (the README's command) runs
the intervals oldest first, each publishing ``recsys_validated_data`` with its interval in
the event's extra, and the asset schedules ``recsys_train``, which trains on every interval
the events name. One Airflow with its own home, ports and metadata DB, stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; Airflow log tail:\n{tail}")


class LiveAirflow:
    """Handles on one running ``airflow standalone``."""

    def __init__(self, env: dict[str, str], home: Path, log: Path) -> None:
        self.env, self.home, self.log = env, home, log

    def cli(self, *args: str) -> str:
        # `airflow standalone` keeps its metadata on SQLite here, whose single writer lock a busy
        # scheduler can hold past the CLI's busy timeout on a loaded 2-core machine: a CLI write
        # that lost that race ("database is locked", rolled back) is tried again, anything else
        # fails at once. (`make ui` runs Airflow on PostgreSQL and has no such race.)
        for attempt in range(3):
            done = subprocess.run(
                [str(Path(sys.executable).with_name("airflow")), *args],
                env=self.env, capture_output=True, text=True, timeout=180, check=False,
            )  # fmt: skip
            if done.returncode == 0 or "database is locked" not in done.stdout + done.stderr:
                break
            time.sleep(5 * (attempt + 1))
        assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAirflow]:
    root = tmp_path_factory.mktemp("live")
    home, recsys_home, log = root / "airflow", root / "recsys", root / "standalone.log"
    home.mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "RECSYS_HOME": str(recsys_home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    for key in ("MLFLOW_TRACKING_URI", "RECSYS_REPLICA_URL", "RECSYS_DB_URL"):
        env.pop(key, None)
    seed = (
        "from datetime import date; from tasks.data.sources.frames import write_business_frames; "
        "from tasks.data.sources.generate import GeneratorConfig, generate_frames; "
        "from tasks.core.settings import load_settings; "
        "write_business_frames(generate_frames(GeneratorConfig(n_users=100, n_illusts=300, "
        "n_artists=30, days=3, start_date=date(2024, 1, 1), seed=3)), "
        "load_settings().replica_url)"
    )
    subprocess.run([sys.executable, "-c", seed], env=env, check=True, timeout=300)
    live = LiveAirflow(env, home, log)
    live.cli("db", "migrate")
    subprocess.run(
        [sys.executable, str(REPO / "scripts/airflow_setup.py")], env=env, check=True, timeout=300
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "standalone"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(
            "the DAG processor to parse recsys_extract_validate and recsys_train",
            lambda: (
                process.poll() is None
                and len(live.rows("SELECT dag_id FROM serialized_dag WHERE dag_id LIKE 'recsys_%'"))
                >= 4
            ),
            240,
            log,
        )
        yield live
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        # children that outlive the parent (LocalExecutor workers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _runs(live: LiveAirflow, dag_id: str, run_type: str | None = None) -> list[tuple[str, str]]:
    sql = "SELECT run_id, state FROM dag_run WHERE dag_id = ?"
    params: tuple[str, ...] = (dag_id,)
    if run_type is not None:
        sql, params = sql + " AND run_type = ?", (dag_id, run_type)
    return live.rows(sql + " ORDER BY logical_date", *params)


FINISHED = ("success", "failed")
EXTRACT, TRAIN = "recsys_extract_validate", "recsys_train"


def _all_finished(live: LiveAirflow, dag_id: str, at_least: int, run_type: str | None = None):  # type: ignore[no-untyped-def]
    runs = _runs(live, dag_id, run_type)
    return len(runs) >= at_least and all(state in FINISHED for _, state in runs) and runs


def test_backfill_runs_oldest_first_and_the_asset_triggers_training(airflow: LiveAirflow) -> None:
    # unpausing (catchup off) schedules the latest interval; let it finish first
    airflow.cli("dags", "unpause", EXTRACT)
    _wait_for("the scheduled run", lambda: _all_finished(airflow, EXTRACT, 1), 180, airflow.log)
    airflow.cli(
        "backfill", "create", "--dag-id", EXTRACT,
        "--from-date", DAYS[0], "--to-date", DAYS[-1], "--max-active-runs", "1",
    )  # fmt: skip
    runs = _wait_for(
        "the three backfill runs",
        lambda: _all_finished(airflow, EXTRACT, len(DAYS), "backfill"),
        300,
        airflow.log,
    )
    assert [state for _, state in runs] == ["success"] * len(DAYS), runs
    # one run at a time, oldest first
    spans = airflow.rows(
        "SELECT logical_date, start_date, end_date FROM dag_run "
        "WHERE dag_id = ? AND run_type = 'backfill' ORDER BY logical_date",
        EXTRACT,
    )
    assert all(spans[i][2] <= spans[i + 1][1] for i in range(len(spans) - 1)), spans
    day_ends = [*DAYS[1:], "2024-01-04"]
    days = [(f"{s}T00:00:00", f"{e}T00:00:00") for s, e in zip(DAYS, day_ends, strict=True)]
    extras = [
        json.loads(extra)
        for (extra,) in airflow.rows(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'recsys_validated_data' AND e.source_run_id LIKE 'backfill%'"
        )
    ]
    assert sorted((e["interval_start"], e["interval_end"]) for e in extras) == days

    # The training DAG, unpaused now, is scheduled by the next event and receives every
    # event since its last run, the backfill's included.
    airflow.cli("dags", "unpause", TRAIN)
    span = {
        "interval_start": f"{DAYS[0]}T00:00:00+00:00",
        "interval_end": "2024-01-04T00:00:00+00:00",
    }
    airflow.cli("dags", "trigger", EXTRACT, "--conf", json.dumps(span))
    [(train_run, state)] = _wait_for(
        "the asset-triggered recsys_train run",
        lambda: _all_finished(airflow, TRAIN, 1, "asset_triggered"),
        480,
        airflow.log,
    )
    tasks = dict(
        airflow.rows(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            TRAIN,
            train_run,
        )
    )
    assert state == "success", tasks
    assert tasks["train"] == tasks["register"] == tasks["promotion_gate"] == "success", tasks
    [(raw,)] = airflow.rows(
        "SELECT value FROM xcom WHERE dag_id = ? AND task_id = 'intervals' AND run_id = ?",
        TRAIN,
        train_run,
    )
    trained = {(i["start"], i["end"]) for i in json.loads(raw)}
    assert set(days) <= trained, trained
