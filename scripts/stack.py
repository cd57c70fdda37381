"""The production topology, natively: ``python scripts/stack.py up|down|status|env|start|stop|kill``.

Every server the compose file (``infra/docker-compose.yml``) runs, as processes on this host,
bound to 127.0.0.1 on their own ports so nothing collides with the test services:

==========================  =====  ======================================================
component                   port   what runs
==========================  =====  ======================================================
mariadb                     3307   primary (business DB + the ``recsys`` DB) and a GTID
                            3308   replica with ``read_only=ON`` (``scripts/stack_mariadb.py``)
postgres                    5432   the system cluster: DBs ``recsys_stack_airflow``/``_mlflow``
redis                       6380   its own ``redis-server`` (AOF): KV (db 1), Celery broker (db 0)
milvus                      19540  ``milvus-lite server`` (Milvus Lite's gRPC server mode)
mlflow                      5050   ``mlflow server``, Postgres backend, ``--serve-artifacts``
tfserving                   8511   the TF-Serving REST *stand-in* (tests/doubles); the real
                                   binary cannot be installed on this machine class
airflow-api-server          8090   Airflow 3, CeleryExecutor, simple auth manager
airflow-scheduler/-dag-processor/-triggerer, airflow-worker-1/-2 (``airflow celery worker``)
api                         8010   ``uvicorn api.app:create_app`` with 2 workers
==========================  =====  ======================================================

``up`` is idempotent (running parts are left alone) and waits for each part's readiness
check; ``down`` stops them all (not the shared system PostgreSQL); ``clean`` is ``down`` plus
deleting the stack's state (its folder, its two PostgreSQL databases). ``stop NAME`` is a
graceful SIGTERM, ``kill NAME`` a SIGKILL of the part's process group (fault tests), ``start
NAME`` brings one part back. ``env`` prints the stack's client environment as ``export``
lines. Pids, logs and state live under ``$RECSYS_HOME/stack`` (``RECSYS_HOME`` default
``var/``). The shared connection variables come from ``infra/stack.env``; ports can be
overridden with ``RECSYS_STACK_<PART>_PORT`` (PRIMARY, REPLICA, REDIS, MILVUS, MLFLOW,
TFSERVING, AIRFLOW, API).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import ui  # noqa: E402  (scripts/ui.py: psql, process and HTTP helpers)

STACK_ENV_FILE = REPO / "infra" / "stack.env"
PG_ROLE = "recsys_stack"
PG_PASSWORD = "recsys_stack"  # loopback-only metadata DBs
PG_DATABASES = ("recsys_stack_airflow", "recsys_stack_mlflow")
AIRFLOW_USER = "admin"
WORKERS = ("airflow-worker-1", "airflow-worker-2")
AIRFLOW_PARTS = (
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    *WORKERS,
)
# The order ``up`` starts them in (``down`` goes backwards).
COMPONENTS = (
    "postgres",
    "mariadb",
    "redis",
    "milvus",
    "mlflow",
    "tfserving",
    *AIRFLOW_PARTS,
    "api",
)
DEFAULT_PORTS = {
    "primary": 3307,
    "replica": 3308,
    "redis": 6380,
    "milvus": 19540,
    "mlflow": 5050,
    "tfserving": 8511,
    "airflow": 8090,
    "api": 8010,
}
UNPAUSE = ("recsys_extract_validate", "recsys_train", "recsys_deploy", "recsys_precompute")


def read_env_file(path: Path = STACK_ENV_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``infra/stack.env`` (comments and blanks skipped), literally."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: not a KEY=VALUE line: {line!r}")
        out[key.strip()] = value.strip()
    return out


def compose_drift(compose_file: Path = REPO / "infra" / "docker-compose.yml") -> list[str]:
    """Where ``infra/docker-compose.yml`` disagrees with ``infra/stack.env`` (empty: none):
    the names inside its connection URIs and that its recsys services read the file."""
    import yaml

    shared = read_env_file()
    compose = yaml.safe_load(compose_file.read_text())
    env = compose["x-recsys-env"]
    airflow = compose["x-airflow-common"]["environment"]
    expect = {
        "AIRFLOW_CONN_RECSYS_REPLICA": (
            f"mysql://{shared['RECSYS_READONLY_USER']}:",
            f"/{shared['RECSYS_REPLICA_DB']}",
        ),
        "AIRFLOW_CONN_RECSYS_DB": (
            f"mysql://{shared['RECSYS_DB_USER']}:",
            f"/{shared['RECSYS_DB_NAME']}?",
        ),
        "AIRFLOW_CONN_RECSYS_KV": ("redis://", f"/{shared['RECSYS_KV_REDIS_DB']}"),
    }
    drift = [
        f"{key}={env.get(key)!r} does not start with {head!r} and hold {tail!r}"
        for key, (head, tail) in expect.items()
        if not (str(env.get(key, "")).startswith(head) and tail in str(env.get(key, "")))
    ]
    broker = str(airflow.get("AIRFLOW__CELERY__BROKER_URL", ""))
    if not broker.endswith(f"/{shared['RECSYS_BROKER_REDIS_DB']}"):
        drift.append(f"AIRFLOW__CELERY__BROKER_URL={broker!r} is not Redis DB "
                     f"{shared['RECSYS_BROKER_REDIS_DB']}")  # fmt: skip
    for name in ("airflow-worker", "api"):
        if "stack.env" not in (compose["services"][name].get("env_file") or []):
            drift.append(f"service {name} does not read env_file stack.env")
    return drift


@dataclass(frozen=True)
class StackConfig:
    """Where each part listens and keeps its state."""

    recsys_home: Path
    ports: dict[str, int]
    shared: dict[str, str]

    @property
    def stack_dir(self) -> Path:
        return self.recsys_home / "stack"

    @property
    def home(self) -> Path:
        """``RECSYS_HOME`` of the stack's tasks and API (kept apart from the embedded one)."""
        return self.stack_dir / "home"

    @property
    def logs_dir(self) -> Path:
        return self.stack_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.stack_dir / "pids"

    @property
    def airflow_home(self) -> Path:
        return self.stack_dir / "airflow"

    @property
    def serving_dir(self) -> Path:
        return self.stack_dir / "serving"

    def pg_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:5432/{database}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['airflow']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def tfserving_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['tfserving']}"

    @property
    def milvus_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['milvus']}"

    def redis_url(self, db_key: str) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/{self.shared[db_key]}"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"


def load_config() -> StackConfig:
    """Ports from ``RECSYS_STACK_<PART>_PORT`` (else the fixed defaults), ``infra/stack.env``."""
    home = Path(os.environ.get("RECSYS_HOME") or REPO / "var").resolve()
    ports = {
        key: int(os.environ.get(f"RECSYS_STACK_{key.upper()}_PORT", str(default)))
        for key, default in DEFAULT_PORTS.items()
    }
    return StackConfig(recsys_home=home, ports=ports, shared=read_env_file())


def mariadb_module() -> ModuleType:
    """``scripts/stack_mariadb.py`` (the primary + replica pair), imported when first needed."""
    return importlib.import_module("stack_mariadb")


def mariadb_urls(cfg: StackConfig) -> dict[str, str]:
    """SQLAlchemy URLs ``primary``, ``replica`` and ``recsys_db`` of the MariaDB pair."""
    urls = mariadb_module().urls(cfg.ports["primary"], cfg.ports["replica"])
    return {key.lower().removesuffix("_url"): value for key, value in urls.items()}


def _airflow_uri(sqlalchemy_url: str) -> str:
    """``mysql+mysqldb://...`` as the Airflow connection URI ``mysql://...``."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    if not sep or not scheme.startswith("mysql"):
        raise ValueError(f"not a MySQL SQLAlchemy URL: {sqlalchemy_url!r}")
    return "mysql://" + rest


def _secret(cfg: StackConfig, name: str) -> str:
    """A random secret generated once into the stack dir (shared by every Airflow part)."""
    path = cfg.stack_dir / f".{name}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_password(cfg: StackConfig) -> str:
    """The Airflow login's password (simple auth manager's passwords file, generated once)."""
    passwords = (
        json.loads(cfg.passwords_file.read_text() or "{}") if cfg.passwords_file.exists() else {}
    )
    if AIRFLOW_USER not in passwords:
        passwords[AIRFLOW_USER] = secrets.token_urlsafe(12)
        cfg.passwords_file.parent.mkdir(parents=True, exist_ok=True)
        cfg.passwords_file.write_text(json.dumps(passwords) + "\n")
        cfg.passwords_file.chmod(0o600)
    return str(passwords[AIRFLOW_USER])


def client_env(cfg: StackConfig) -> dict[str, str]:
    """What a client of the stack needs (tasks, the API, tests): the backends' URIs."""
    urls = mariadb_urls(cfg)
    return {
        **cfg.shared,
        "RECSYS_HOME": str(cfg.home),
        "RECSYS_STACK_DIR": str(cfg.stack_dir),
        "RECSYS_SERVING_BASE_PATH": str(cfg.serving_dir),
        "AIRFLOW_CONN_RECSYS_REPLICA": _airflow_uri(urls["replica"]),
        "AIRFLOW_CONN_RECSYS_DB": _airflow_uri(urls["recsys_db"]),
        # SQLAlchemy URLs for clients (tests, seeding): root on the primary's business DB
        "RECSYS_STACK_PRIMARY_URL": urls["primary"],
        "RECSYS_STACK_REPLICA_URL": urls["replica"],
        "RECSYS_STACK_RECSYS_DB_URL": urls["recsys_db"],
        "AIRFLOW_CONN_RECSYS_KV": cfg.redis_url("RECSYS_KV_REDIS_DB"),
        "AIRFLOW_CONN_RECSYS_MILVUS": f"milvus://127.0.0.1:{cfg.ports['milvus']}",
        "AIRFLOW_CONN_RECSYS_TFSERVING": f"tfserving://127.0.0.1:{cfg.ports['tfserving']}",
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        # experiments store artifacts through the tracking server (--serve-artifacts)
        "RECSYS_MLFLOW_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "RECSYS_MLFLOW_UI_URL": cfg.mlflow_url,
        # no telemetry thread in tasks (it raced on os.environ: KeyError
        # '_MLFLOW_TELEMETRY_SESSION_ID' in a metric call), and nothing to reach from here
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RECSYS_STACK_AIRFLOW_URL": cfg.airflow_url,
        "RECSYS_STACK_API_URL": cfg.api_url,
        "RECSYS_STACK_AIRFLOW_USER": AIRFLOW_USER,
        "RECSYS_STACK_AIRFLOW_PASSWORD": airflow_password(cfg),
    }


def process_env(cfg: StackConfig) -> dict[str, str]:
    """The environment every part (and the Airflow CLI) runs with."""
    bin_dir = str(Path(sys.executable).parent)
    password = urllib.parse.quote(airflow_password(cfg), safe="")
    airflow_db = cfg.pg_url("recsys_stack_airflow")
    env = {
        **os.environ,
        **client_env(cfg),
        "AIRFLOW_HOME": str(cfg.airflow_home),
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
        "AIRFLOW__CORE__FERNET_KEY": "",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "AIRFLOW__CELERY__BROKER_URL": cfg.redis_url("RECSYS_BROKER_REDIS_DB"),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(cfg.ports["airflow"]),
        "AIRFLOW__API__BASE_URL": cfg.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(cfg, "jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": _secret(cfg, "api_secret"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(cfg.airflow_home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # a worker lost mid-task is noticed within about a minute, not five
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW_CONN_AIRFLOW_API": f"http://{AIRFLOW_USER}:{password}@127.0.0.1:{cfg.ports['airflow']}",
    }
    env.pop("AIRFLOW__CORE__SQL_ALCHEMY_CONN", None)
    return env


def _commands(cfg: StackConfig) -> dict[str, list[str]]:
    """The command line of each process-backed part (mariadb and postgres are not here)."""
    bin_dir = Path(sys.executable).parent
    airflow = str(bin_dir / "airflow")
    p = cfg.ports
    worker = [airflow, "celery", "worker", "--skip-serve-logs", "--concurrency", "2"]
    return {
        "redis": [
            "redis-server", "--bind", "127.0.0.1", "--port", str(p["redis"]),
            "--dir", str(cfg.stack_dir / "redis"), "--save", "", "--appendonly", "yes",
        ],
        "milvus": [
            str(bin_dir / "milvus-lite"), "server", "--data-dir", str(cfg.stack_dir / "milvus"),
            "--host", "127.0.0.1", "--port", str(p["milvus"]),
        ],
        "mlflow": [
            str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(p["mlflow"]),
            "--workers", "1", "--backend-store-uri", cfg.pg_url("recsys_stack_mlflow"),
            "--serve-artifacts", "--artifacts-destination", str(cfg.stack_dir / "mlartifacts"),
        ],
        "tfserving": [
            sys.executable, "-m", "tests.doubles.tfserving_standin",
            "--base-path", str(cfg.serving_dir), "--model-name", cfg.shared["RECSYS_MODEL_NAME"],
            "--host", "127.0.0.1", "--port", str(p["tfserving"]),
        ],
        "airflow-api-server": [airflow, "api-server"],
        "airflow-scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "airflow-dag-processor": [airflow, "dag-processor"],
        "airflow-triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        "airflow-worker-1": [*worker, "--celery-hostname", "stack-worker-1@%h"],
        "airflow-worker-2": [*worker, "--celery-hostname", "stack-worker-2@%h"],
        "api": [
            str(bin_dir / "uvicorn"), "api.app:create_app", "--factory", "--host", "127.0.0.1",
            "--port", str(p["api"]), "--workers", "2",
        ],
    }  # fmt: skip


# ---- process bookkeeping -------------------------------------------------------------------


def _pid_file(cfg: StackConfig, name: str) -> Path:
    return cfg.pid_dir / f"{name}.pid"


def _log_file(cfg: StackConfig, name: str) -> Path:
    return cfg.logs_dir / f"{name}.log"


def running_pid(cfg: StackConfig, name: str) -> int | None:
    """The pid of a process-backed part when its process is alive, else None."""
    path = _pid_file(cfg, name)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid and ui._pid_alive(pid) and not _zombie(pid) else None


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    return False


def _tail(cfg: StackConfig, name: str, chars: int = 3000) -> str:
    log = _log_file(cfg, name)
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` now. With ``SO_REUSEADDR``, as every server
    here binds: the ``TIME_WAIT`` connections a part just stopped leaves behind do not count
    (a plain bind fails on them, and ``start`` right after ``stop`` refused), a listener does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status when this process started it (``start`` from a test):
    an unreaped leader stays a zombie, which keeps its process group "alive" to ``killpg``."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_running(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies reaped or ignored)."""
    _reap(pgid)
    if not ui._group_alive(pgid):
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _airflow_health(cfg: StackConfig, part: str) -> bool:
    """A part's status in the api-server's ``/api/v2/monitor/health`` (its job heartbeat)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{cfg.airflow_url}/api/v2/monitor/health", timeout=5) as r:  # noqa: S310
            body = json.loads(r.read())
    except (OSError, ValueError):
        return False
    return (body.get(part) or {}).get("status") == "healthy"


def _worker_ready(cfg: StackConfig, name: str) -> bool:
    """The worker runs and its Celery node logged ``ready.`` since its latest start (the log
    alone would still say ready after ``down``)."""
    log = _log_file(cfg, name)
    if running_pid(cfg, name) is None or not log.exists():
        return False
    text = log.read_text(errors="replace")
    since = text[text.rfind(f"stack: start {name}") :]
    return f"stack-{name.removeprefix('airflow-')}@" in since and " ready." in since


def readiness(cfg: StackConfig) -> dict[str, Callable[[], bool]]:
    """One check per part: True once it serves."""
    p = cfg.ports
    checks: dict[str, Callable[[], bool]] = {
        "postgres": lambda: (
            subprocess.run(
                ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False
            ).returncode
            == 0
        ),
        "mariadb": lambda: _mariadb_ready(cfg),
        "redis": lambda: _redis_ping(p["redis"]),
        "milvus": lambda: _tcp_open(p["milvus"]),
        "mlflow": lambda: ui._get(f"{cfg.mlflow_url}/health") == 200,
        # the stand-in answers 404 for a model it has not loaded yet: it serves
        "tfserving": lambda: ui._get(f"{cfg.tfserving_url}/v1/models/none") in (200, 404),
        "airflow-api-server": lambda: ui._get(f"{cfg.airflow_url}/api/v2/monitor/health") == 200,
        "airflow-scheduler": lambda: _airflow_health(cfg, "scheduler"),
        "airflow-dag-processor": lambda: _airflow_health(cfg, "dag_processor"),
        "airflow-triggerer": lambda: _airflow_health(cfg, "triggerer"),
        "api": lambda: ui._get(f"{cfg.api_url}/version") == 200,
    }
    for worker in WORKERS:
        checks[worker] = lambda worker=worker: _worker_ready(cfg, worker)
    return checks


def _mariadb_ready(cfg: StackConfig) -> bool:
    try:
        state = mariadb_module().status(cfg.stack_dir)
    except Exception:
        return False
    return all((state.get(role) or {}).get("running") for role in ("primary", "replica"))


def _wait_ready(cfg: StackConfig, name: str, timeout_s: float) -> None:
    check = readiness(cfg)[name]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if name in _commands(cfg) and running_pid(cfg, name) is None:
            raise RuntimeError(f"stack: {name} exited while starting\n{_tail(cfg, name)}")
        time.sleep(1)
    raise RuntimeError(
        f"stack: {name} not ready after {timeout_s:.0f}s (log {_log_file(cfg, name)})\n"
        f"{_tail(cfg, name)}"
    )


# ---- parts -----------------------------------------------------------------------------------


def _ensure_postgres(cfg: StackConfig) -> None:
    """The system cluster up (pg_ctlcluster if down), the stack's role and two databases."""
    if not readiness(cfg)["postgres"]():
        versions = sorted(
            (d.name for d in Path("/usr/lib/postgresql").iterdir()), key=lambda v: float(v)
        )
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
            check=False,
        )
        _wait_ready(cfg, "postgres", 60)
    if ui._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{PG_ROLE}'") != "1":
        ui._psql(f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{PG_PASSWORD}'")
    for database in PG_DATABASES:
        if ui._psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") != "1":
            ui._psql(f"CREATE DATABASE {database} OWNER {PG_ROLE}")


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the stack's Celery workers: the task instances they run
    record ``stack-worker-N@<host>``, so which worker ran a task is visible in the UI/API."""
    return os.environ.get("RECSYS_STACK_WORKER_HOSTNAME") or socket.getfqdn()


def _spawn(cfg: StackConfig, name: str, env: dict[str, str]) -> None:
    cmd = _commands(cfg)[name]
    if name in WORKERS:
        env = {
            **env,
            "RECSYS_STACK_WORKER_HOSTNAME": f"stack-{name.removeprefix('airflow-')}@"
            + socket.gethostname(),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scripts.stack.worker_hostname",
        }
    with _log_file(cfg, name).open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} stack: start {name}\n".encode())
        log.flush()
        process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=REPO, start_new_session=True,
        )  # fmt: skip
    _pid_file(cfg, name).write_text(f"{process.pid}\n")


_PORT_OF = {
    "redis": "redis",
    "milvus": "milvus",
    "mlflow": "mlflow",
    "tfserving": "tfserving",
    "airflow-api-server": "airflow",
    "api": "api",
}


def _start_migrate(cfg: StackConfig, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``airflow db migrate`` in the background (it overlaps the other servers' start)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    with _log_file(cfg, "airflow-migrate").open("wb") as log:
        return subprocess.Popen(
            [airflow, "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip


def _finish_airflow_setup(
    cfg: StackConfig, env: dict[str, str], migrate: subprocess.Popen[bytes]
) -> None:
    """Wait for the migration, then create the pools the DAGs use (one CLI call)."""
    if migrate.wait(timeout=600) != 0:
        raise RuntimeError(f"stack: airflow db migrate failed\n{_tail(cfg, 'airflow-migrate')}")
    from plugins.dag_defaults import POOLS

    airflow = str(Path(sys.executable).with_name("airflow"))
    pools = cfg.airflow_home / "pools.json"
    pools.write_text(
        json.dumps(
            {
                name: {"slots": slots, "description": text, "include_deferred": False}
                for name, (slots, text) in POOLS.items()
            }
        )
    )
    done = subprocess.run(
        [airflow, "pools", "import", str(pools)], env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"stack: airflow pools import failed\n{done.stdout}\n{done.stderr}")


def _launch(cfg: StackConfig, name: str) -> None:
    """Start one part unless it runs already (no waiting; see ``_wait_ready``)."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown stack part {name!r}; one of {', '.join(COMPONENTS)}")
    for folder in (cfg.logs_dir, cfg.pid_dir, cfg.airflow_home, cfg.home, cfg.serving_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in ("redis", "milvus", "mlartifacts"):
        (cfg.stack_dir / folder).mkdir(parents=True, exist_ok=True)
    if name == "postgres":
        _ensure_postgres(cfg)
    elif name == "mariadb":
        mariadb_module().up(cfg.stack_dir, cfg.ports["primary"], cfg.ports["replica"])
    elif running_pid(cfg, name) is None:
        port_key = _PORT_OF.get(name)
        if port_key and not _port_bindable(cfg.ports[port_key]):
            raise RuntimeError(
                f"stack: port {cfg.ports[port_key]} for {name} is in use by another process "
                f"(set RECSYS_STACK_{port_key.upper()}_PORT)"
            )
        _spawn(cfg, name, process_env(cfg))


def start(cfg: StackConfig, name: str, timeout_s: float = 300) -> None:
    """Start one part unless it runs already, then wait until its readiness check passes."""
    _launch(cfg, name)
    _wait_ready(cfg, name, timeout_s)


def stop(
    cfg: StackConfig, name: str, sig: signal.Signals = signal.SIGTERM, grace_s: float = 30
) -> bool:
    """Stop one part: SIGTERM to its process group (SIGKILL after ``grace_s``), or with
    ``sig=SIGKILL`` at once. The shared system PostgreSQL is never stopped."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown stack part {name!r}; one of {', '.join(COMPONENTS)}")
    if name == "postgres":
        print("stack: postgres is the shared system cluster; left running", file=sys.stderr)
        return False
    if name == "mariadb":
        if sig == signal.SIGKILL:
            module = mariadb_module()
            if hasattr(module, "kill"):
                module.kill(cfg.stack_dir)
                return True
        mariadb_module().down(cfg.stack_dir)
        return True
    pid = running_pid(cfg, name)
    if pid is None:
        _pid_file(cfg, name).unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + (grace_s if sig != signal.SIGKILL else 10)
    while time.monotonic() < deadline and _group_running(pid):
        time.sleep(0.3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    _pid_file(cfg, name).unlink(missing_ok=True)
    return True


def _serialized_dags(cfg: StackConfig) -> set[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(cfg.pg_url("recsys_stack_airflow"))
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(sa.text("SELECT dag_id FROM serialized_dag"))}
    except Exception:
        return set()
    finally:
        engine.dispose()


# ``up`` starts these groups one after the other; a group's parts start together.
PHASES = (
    ("postgres", "mariadb"),
    ("redis", "milvus", "mlflow", "tfserving"),
    (*AIRFLOW_PARTS, "api"),
)


def up(cfg: StackConfig, timeout_s: float = 300) -> None:
    """Start every part not running yet, group by group; wait for each to be ready."""
    drift = compose_drift()
    if drift:
        raise RuntimeError("stack: infra/docker-compose.yml drifted from infra/stack.env:\n  "
                           + "\n  ".join(drift))  # fmt: skip
    started = time.monotonic()
    migrate = None
    for phase in PHASES:
        t0 = time.monotonic()
        if "airflow-api-server" in phase and migrate is not None:
            _finish_airflow_setup(cfg, process_env(cfg), migrate)
            print(f"stack: {'airflow db migrate':22} done  ({time.monotonic() - t0:5.1f}s)")
        for name in phase:
            _launch(cfg, name)
        if "postgres" in phase and running_pid(cfg, "airflow-api-server") is None:
            for folder in (cfg.airflow_home, cfg.logs_dir):
                folder.mkdir(parents=True, exist_ok=True)
            migrate = _start_migrate(cfg, process_env(cfg))
        for name in phase:
            _wait_ready(cfg, name, timeout_s)
            print(f"stack: {name:22} ready ({time.monotonic() - t0:5.1f}s)", flush=True)
    deadline = time.monotonic() + timeout_s
    while not set(UNPAUSE) <= _serialized_dags(cfg):
        if time.monotonic() > deadline:
            raise RuntimeError(f"stack: DAGs not parsed\n{_tail(cfg, 'airflow-dag-processor')}")
        time.sleep(2)
    print(f"stack: up in {time.monotonic() - started:.0f}s", flush=True)
    print(summary(cfg))


def _stop_group(cfg: StackConfig, names: tuple[str, ...], grace_s: float = 30) -> list[str]:
    """SIGTERM every running part of ``names`` at once, SIGKILL what outlives ``grace_s``."""
    pids = {n: pid for n in names if (pid := running_pid(cfg, n)) is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_group_running(p) for p in pids.values()):
        time.sleep(0.3)
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for name in names:
        _pid_file(cfg, name).unlink(missing_ok=True)
    return list(pids)


def down(cfg: StackConfig) -> None:
    """Stop every part, group by group in reverse start order; the system PostgreSQL stays."""
    stopped: list[str] = []
    for phase in reversed(PHASES):
        stopped += _stop_group(cfg, tuple(n for n in phase if n in _commands(cfg)))
        if "mariadb" in phase:
            try:
                mariadb_module().down(cfg.stack_dir)
                stopped.append("mariadb")
            except ModuleNotFoundError as exc:
                print(f"stack: mariadb: {exc}", file=sys.stderr)
    print(f"stack: stopped {', '.join(stopped) or 'nothing'}")


def clean(cfg: StackConfig) -> None:
    """``down``, then delete the stack's state: its folder and its two PostgreSQL databases
    (the next ``up`` starts from empty servers, as CI wants)."""
    import shutil

    down(cfg)
    if cfg.stack_dir.exists():
        shutil.rmtree(cfg.stack_dir)
    if readiness(cfg)["postgres"]():
        for database in PG_DATABASES:
            ui._psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    print(f"stack: removed {cfg.stack_dir} and databases {', '.join(PG_DATABASES)}")


def status(cfg: StackConfig) -> dict[str, str]:
    """Each part: ``ready``, ``running (not ready)`` or ``stopped``."""
    checks = readiness(cfg)
    out: dict[str, str] = {}
    for name in COMPONENTS:
        ready = checks[name]()
        pid = running_pid(cfg, name) if name in _commands(cfg) else None
        if ready:
            out[name] = "ready" + (f" (pid {pid})" if pid else "")
        elif pid:
            out[name] = f"running, not ready (pid {pid})"
        else:
            out[name] = "stopped"
    return out


def summary(cfg: StackConfig) -> str:
    return "\n".join(
        [
            f"Airflow  {cfg.airflow_url}  (user {AIRFLOW_USER!r}, password "
            f"{airflow_password(cfg)!r})",
            f"MLflow   {cfg.mlflow_url}",
            f"API      {cfg.api_url}/docs",
            f"logs     {cfg.logs_dir}   client env: python scripts/stack.py env",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "action", choices=("up", "down", "clean", "status", "env", "start", "stop", "kill")
    )
    parser.add_argument("name", nargs="?", help="start/stop/kill: the part")
    args = parser.parse_args(argv)
    cfg = load_config()
    if args.action in ("start", "stop", "kill"):
        if not args.name:
            parser.error(f"{args.action} needs a part: {', '.join(COMPONENTS)}")
        if args.action == "start":
            start(cfg, args.name)
        else:
            stop(cfg, args.name, signal.SIGKILL if args.action == "kill" else signal.SIGTERM)
        return 0
    if args.action == "up":
        up(cfg)
    elif args.action == "down":
        down(cfg)
    elif args.action == "clean":
        clean(cfg)
    elif args.action == "env":
        for key, value in client_env(cfg).items():
            print(f"export {key}={_shell_quote(value)}")
    else:
        for name, state in status(cfg).items():
            print(f"{name:22} {state}")
    return 0


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


if __name__ == "__main__":
    raise SystemExit(main())
