"""The local UI stack: ``python scripts/ui.py up|down|status|airflow ARGS``.

Airflow 3 as separate parts (api-server, scheduler, dag-processor, triggerer; LocalExecutor
with parallelism sized to the machine) on a PostgreSQL metadata DB, the MLflow UI over the
tracking DB the pipeline writes, and the recommendation API. Everything binds 127.0.0.1;
the log servers are off (the api-server reads task logs from the shared local folder).
``airflow standalone`` on SQLite is not used: its ``log`` table locks under the UI's writes
and it starts 32 executor processes. SQLite stays only for ``dag.test()``.

Environment (all optional): ``RECSYS_HOME`` (default ``var/``), ``RECSYS_UI_AIRFLOW_PORT``
(8080), ``RECSYS_UI_MLFLOW_PORT`` (5000), ``RECSYS_UI_API_PORT`` (8000), ``RECSYS_UI_PG_DB``
(database and role ``recsys_airflow``), ``RECSYS_UI_UNPAUSE`` (comma-separated DAG ids to
unpause; default: the four ``recsys_*`` DAGs, which a person triggers or which their
assets chain), ``RECSYS_UI_PARALLELISM``. State (pids, logs, the Airflow home) lives under
``$RECSYS_HOME/ui``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_UNPAUSE = (
    "recsys_extract_validate",
    "recsys_train",
    "recsys_deploy",
    "recsys_precompute",
)
PG_ROLE_PASSWORD = "recsys_airflow"  # local, loopback-only metadata DB
UI_USER = "admin"


@dataclass(frozen=True)
class UiConfig:
    """Where each part of the stack listens and keeps its state."""

    recsys_home: Path
    airflow_port: int
    mlflow_port: int
    api_port: int
    pg_db: str
    unpause: tuple[str, ...]
    parallelism: int

    @property
    def state_dir(self) -> Path:
        return self.recsys_home / "ui"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"

    @property
    def sql_alchemy_conn(self) -> str:
        return f"postgresql+psycopg2://{self.pg_db}:{PG_ROLE_PASSWORD}@127.0.0.1:5432/{self.pg_db}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"


def load_config() -> UiConfig:
    """Read the stack's config from the environment (defaults: the ports a person expects)."""
    from tasks.core.settings import load_settings

    unpause = os.environ.get("RECSYS_UI_UNPAUSE")
    return UiConfig(
        recsys_home=load_settings().home,
        airflow_port=int(os.environ.get("RECSYS_UI_AIRFLOW_PORT", "8080")),
        mlflow_port=int(os.environ.get("RECSYS_UI_MLFLOW_PORT", "5000")),
        api_port=int(os.environ.get("RECSYS_UI_API_PORT", "8000")),
        pg_db=os.environ.get("RECSYS_UI_PG_DB", "recsys_airflow"),
        unpause=DEFAULT_UNPAUSE
        if unpause is None
        else tuple(d.strip() for d in unpause.split(",") if d.strip()),
        # LocalExecutor forks one worker per slot: 2..4 on a small machine, not 32.
        parallelism=int(
            os.environ.get("RECSYS_UI_PARALLELISM", str(max(2, min(4, os.cpu_count() or 2))))
        ),
    )


def ui_password(cfg: UiConfig) -> str:
    """The UI login's password: generated once into the simple auth manager's passwords file
    (which it then keeps), so the parts can be given the ``airflow_api`` Connection."""
    passwords = (
        json.loads(cfg.passwords_file.read_text() or "{}") if cfg.passwords_file.exists() else {}
    )
    if UI_USER not in passwords:
        passwords[UI_USER] = secrets.token_urlsafe(12)
        cfg.passwords_file.parent.mkdir(parents=True, exist_ok=True)
        cfg.passwords_file.write_text(json.dumps(passwords) + "\n")
        cfg.passwords_file.chmod(0o600)
    return str(passwords[UI_USER])


def airflow_env(cfg: UiConfig) -> dict[str, str]:
    """The environment every Airflow part (and its CLI) runs with."""
    bin_dir = str(Path(sys.executable).parent)
    password = urllib.parse.quote(ui_password(cfg), safe="")
    env = {
        **os.environ,
        "RECSYS_HOME": str(cfg.recsys_home),
        "AIRFLOW_HOME": str(cfg.airflow_home),
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.sql_alchemy_conn,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(cfg.airflow_port),
        "AIRFLOW__API__BASE_URL": cfg.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(cfg.airflow_home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # the links the train task logs and tags point to
        "RECSYS_MLFLOW_UI_URL": cfg.mlflow_url,
        # the REST API the promotion gate sets the DAG run's note through (plugins/run_notes)
        "AIRFLOW_CONN_AIRFLOW_API": f"http://{UI_USER}:{password}@127.0.0.1:{cfg.airflow_port}",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    env.pop("AIRFLOW__CORE__SQL_ALCHEMY_CONN", None)
    return env


def _psql(sql: str, database: str = "postgres") -> str:
    """Run SQL as the PostgreSQL superuser: peer auth over the socket as root, else trust on TCP."""
    if os.geteuid() == 0 and shutil.which("runuser"):
        cmd = ["runuser", "-u", "postgres", "--", "psql", "-d", database]
    else:
        cmd = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database]
    done = subprocess.run(
        [*cmd, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, check=False, cwd="/",
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {sql}\n{done.stderr}")
    return done.stdout.strip()


def ensure_database(cfg: UiConfig) -> None:
    """Create the role and database ``cfg.pg_db`` when absent (idempotent)."""
    name = cfg.pg_db
    if not name.replace("_", "").isalnum():
        raise ValueError(f"bad database name {name!r}")
    if _psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'") != "1":
        _psql(f"CREATE ROLE {name} LOGIN PASSWORD '{PG_ROLE_PASSWORD}'")
    if _psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
        _psql(f"CREATE DATABASE {name} OWNER {name}")


def drop_database(cfg: UiConfig) -> None:
    """Drop the database and role (used by tests on their private database)."""
    _psql(f"DROP DATABASE IF EXISTS {cfg.pg_db} WITH (FORCE)")
    _psql(f"DROP ROLE IF EXISTS {cfg.pg_db}")


def _airflow_cli(cfg: UiConfig, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args],
        env=airflow_env(cfg), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def _commands(cfg: UiConfig) -> dict[str, list[str]]:
    bin_dir = Path(sys.executable).parent
    airflow = str(bin_dir / "airflow")
    from tasks.core.settings import load_settings

    settings = load_settings(cfg.recsys_home)
    return {
        "api-server": [airflow, "api-server"],
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        "mlflow": [
            str(bin_dir / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(cfg.mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            settings.mlflow_tracking_uri,
            "--default-artifact-root",
            settings.mlflow_artifact_root,
        ],  # fmt: skip
        "api": [
            str(bin_dir / "uvicorn"),
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(cfg.api_port),
        ],  # fmt: skip
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(cfg: UiConfig) -> dict[str, int]:
    out: dict[str, int] = {}
    if cfg.pid_dir.is_dir():
        for pid_file in sorted(cfg.pid_dir.glob("*.pid")):
            pid = int(pid_file.read_text().strip() or 0)
            if pid and _pid_alive(pid):
                out[pid_file.stem] = pid
    return out


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _get(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _wait(what: str, check, timeout_s: float, cfg: UiConfig) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        dead = [name for name in _commands(cfg) if name not in _running(cfg)]
        # a server that lost its port can stay alive without serving (mlflow's job runner)
        dead += [
            name
            for name in ("api-server", "mlflow", "api")
            if name not in dead
            and (cfg.logs_dir / f"{name}.log").exists()
            and "address already in use"
            in (cfg.logs_dir / f"{name}.log").read_text(errors="replace")
        ]
        if dead:
            tails = "\n".join(
                f"--- {name}.log\n{(cfg.logs_dir / f'{name}.log').read_text(errors='replace')[-2000:]}"
                for name in dead
                if (cfg.logs_dir / f"{name}.log").exists()
            )
            raise RuntimeError(f"ui: {', '.join(dead)} failed while waiting for {what}\n{tails}")
        time.sleep(1)
    raise RuntimeError(
        f"ui: timed out after {timeout_s:.0f}s waiting for {what} (logs: {cfg.logs_dir})"
    )


def _serialized_dags(cfg: UiConfig) -> set[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(cfg.sql_alchemy_conn)
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(sa.text("SELECT dag_id FROM serialized_dag"))}
    except Exception:
        return set()
    finally:
        engine.dispose()


def up(cfg: UiConfig, timeout_s: float = 300) -> None:
    """Start every part that is not running yet, then wait until the UIs answer."""
    subprocess.run(["bash", str(REPO / "scripts/services.sh")], check=True)
    for folder in (cfg.airflow_home, cfg.logs_dir, cfg.pid_dir):
        folder.mkdir(parents=True, exist_ok=True)
    ensure_database(cfg)
    _airflow_cli(cfg, "db", "migrate")
    subprocess.run(
        [sys.executable, str(REPO / "scripts/airflow_setup.py")],
        env=airflow_env(cfg), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    running = _running(cfg)
    env = airflow_env(cfg)
    ports = {"api-server": cfg.airflow_port, "mlflow": cfg.mlflow_port, "api": cfg.api_port}
    for name, port in ports.items():
        if name not in running and not _port_free(port):
            raise RuntimeError(f"ui: port {port} for {name} is in use (set RECSYS_UI_*_PORT)")
    for name, cmd in _commands(cfg).items():
        if name in running:
            continue
        with (cfg.logs_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO, start_new_session=True,
            )  # fmt: skip
        (cfg.pid_dir / f"{name}.pid").write_text(f"{process.pid}\n")
    _wait(
        "the Airflow API server",
        lambda: _get(f"{cfg.airflow_url}/api/v2/monitor/health") == 200,
        timeout_s,
        cfg,
    )
    _wait("the MLflow UI", lambda: _get(f"{cfg.mlflow_url}/health") == 200, timeout_s, cfg)
    _wait("the recommendation API", lambda: _get(f"{cfg.api_url}/docs") == 200, timeout_s, cfg)
    if cfg.unpause:
        _wait(
            f"the DAG processor to parse {', '.join(cfg.unpause)}",
            lambda: set(cfg.unpause) <= _serialized_dags(cfg),
            timeout_s,
            cfg,
        )
        for dag_id in cfg.unpause:
            _airflow_cli(cfg, "dags", "unpause", dag_id)
    print(summary(cfg))


def summary(cfg: UiConfig) -> str:
    """Where to point a browser, and the UI login."""
    password = "?"
    if cfg.passwords_file.exists():
        password = json.loads(cfg.passwords_file.read_text() or "{}").get(UI_USER, "?")
    return "\n".join(
        [
            f"Airflow UI  {cfg.airflow_url}  (user {UI_USER!r}, password {password!r}; "
            f"from {cfg.passwords_file})",
            f"MLflow UI   {cfg.mlflow_url}",
            f"API         {cfg.api_url}/docs",
            f"unpaused    {', '.join(cfg.unpause) or '-'}",
            f"logs        {cfg.logs_dir}   stop: make ui-down",
        ]
    )


def down(cfg: UiConfig, grace_s: float = 30) -> None:
    """Stop every part (its whole process group: executor workers, gunicorn children)."""
    running = _running(cfg)
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_group_alive(pid) for pid in running.values()):
        time.sleep(0.5)
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    if cfg.pid_dir.is_dir():
        for pid_file in cfg.pid_dir.glob("*.pid"):
            pid_file.unlink()
    if running:
        print(f"ui: stopped {', '.join(sorted(running))}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status", "airflow"))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="airflow: the CLI's arguments")
    args = parser.parse_args(argv)
    cfg = load_config()
    if args.action == "airflow":  # the Airflow CLI against this stack (backfill, dags, ...)
        airflow = str(Path(sys.executable).with_name("airflow"))
        return subprocess.run([airflow, *args.args], env=airflow_env(cfg), check=False).returncode
    if args.action == "up":
        try:
            up(cfg)
        except BaseException:
            down(cfg)
            raise
    elif args.action == "down":
        down(cfg)
    else:
        running = _running(cfg)
        for name in _commands(cfg):
            print(f"{name:14} {'pid ' + str(running[name]) if name in running else 'stopped'}")
        print(summary(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
