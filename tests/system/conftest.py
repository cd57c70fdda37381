"""System tests on the production topology (``scripts/stack.py``; ``make test-system``).

Every test here is marked ``system`` (below); the default ``pytest`` run deselects them
(``-m "not system"`` in pyproject's addopts). Run them with ``make test-system``, or with the
stack already up: ``.venv/bin/python -m pytest -m system tests/system``. A session that finds
the stack down brings it up (``stack.py up`` is idempotent) and leaves it running.

Fixture API (for every test file in this folder):

* ``stack`` (session): a :class:`Stack`:
  ``stack.env`` the client environment (``stack.py env``: ``AIRFLOW_CONN_*`` URIs,
  ``MLFLOW_TRACKING_URI``, ``RECSYS_STACK_{PRIMARY,REPLICA,RECSYS_DB}_URL`` SQLAlchemy URLs,
  ``RECSYS_STACK_{AIRFLOW,API}_URL``...); ``stack.run(cmd)`` runs a command with that
  environment (raises with its output on a non-zero exit); ``stack.start(name)``,
  ``stack.stop(name)`` (graceful), ``stack.kill(name)`` (SIGKILL of the part's process
  group), ``stack.status()``; ``stack.settings()`` the project's Settings for the stack.
* ``airflow_api`` (session): an :class:`AirflowApi`, an ``httpx.Client`` on
  ``<airflow>/api/v2`` with the simple auth manager's bearer token, plus ``unpause``,
  ``trigger``, ``wait_run``, ``task_instances`` helpers.
* ``primary`` (session): a SQLAlchemy engine on the primary's business DB (root).
* ``wait_until(check, timeout_s, what)``: a plain helper, importable as
  ``from tests.system.conftest import wait_until``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import stack as stack_script  # noqa: E402  (scripts/stack.py)

TERMINAL_RUN_STATES = {"success", "failed"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``system`` (deselected by default), and run
    ``test_pipeline.py`` first: it trains and deploys the model the fault tests need."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.system)
    order = {"test_pipeline.py": 0, "test_replica.py": 1}
    items.sort(key=lambda item: order.get(Path(str(item.fspath)).name, 2))


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 2) -> Any:
    """Poll ``check`` until it returns a truthy value (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


class Stack:
    """The running stack: its client environment and its parts' lifecycle."""

    def __init__(self, cfg: stack_script.StackConfig) -> None:
        self.cfg = cfg
        self.env: dict[str, str] = stack_script.client_env(cfg)

    def run(
        self, cmd: list[str], *, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the repo with the stack's client environment."""
        done = subprocess.run(
            cmd, env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-3000:]}"
            )
        return done

    def start(self, name: str) -> None:
        stack_script.start(self.cfg, name)

    def stop(self, name: str) -> None:
        stack_script.stop(self.cfg, name, signal.SIGTERM)

    def kill(self, name: str) -> None:
        stack_script.stop(self.cfg, name, signal.SIGKILL)

    def status(self) -> dict[str, str]:
        return stack_script.status(self.cfg)

    def log(self, name: str, chars: int = 5000) -> str:
        return stack_script._tail(self.cfg, name, chars)

    def settings(self):  # type: ignore[no-untyped-def]
        """The project's Settings as the stack's tasks and API see them."""
        from tasks.core.settings import load_settings

        saved = dict(os.environ)
        try:
            os.environ.update(self.env)
            return load_settings(self.env["RECSYS_HOME"])
        finally:
            os.environ.clear()
            os.environ.update(saved)


class AirflowApi(httpx.Client):
    """Airflow's REST API v2 (``/api/v2``), authenticated, with a few run helpers."""

    def unpause(self, dag_id: str) -> None:
        self.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def pause(self, dag_id: str) -> None:
        self.patch(f"/dags/{dag_id}", json={"is_paused": True}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run; its run id."""
        response = self.post(
            f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return str(response.json()["state"])

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float) -> str:
        """Wait until the run ends; its final state."""
        return str(
            wait_until(
                lambda: (s := self.run_state(dag_id, run_id)) in TERMINAL_RUN_STATES and s,
                timeout_s,
                f"{dag_id} run {run_id} to finish",
                every_s=3,
            )
        )

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        response = self.get(f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after"})
        response.raise_for_status()
        return list(response.json()["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return list(response.json()["task_instances"])

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of one task instance (``hostname``, ``state``, ``try_number``)."""
        response = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        response.raise_for_status()
        return list(response.json()["task_instances"])


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The stack, brought up if any part is not ready (left running afterwards)."""
    cfg = stack_script.load_config()
    if any(not state.startswith("ready") for state in stack_script.status(cfg).values()):
        stack_script.up(cfg)
    yield Stack(cfg)


@pytest.fixture(scope="session")
def airflow_api(stack: Stack) -> Iterator[AirflowApi]:
    """An authenticated client of the stack's Airflow REST API v2."""
    base = stack.env["RECSYS_STACK_AIRFLOW_URL"]
    token = httpx.post(
        f"{base}/auth/token",
        json={
            "username": stack.env["RECSYS_STACK_AIRFLOW_USER"],
            "password": stack.env["RECSYS_STACK_AIRFLOW_PASSWORD"],
        },
        timeout=30,
    )
    assert token.status_code in (200, 201), token.text
    client = AirflowApi(
        base_url=f"{base}/api/v2",
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        timeout=60,
    )
    yield client
    client.close()


@pytest.fixture(scope="session")
def primary(stack: Stack) -> Iterator[Any]:
    """SQLAlchemy engine on the primary's business DB (root): seed it, write to it."""
    import sqlalchemy as sa

    engine = sa.create_engine(stack.env["RECSYS_STACK_PRIMARY_URL"])
    yield engine
    engine.dispose()
