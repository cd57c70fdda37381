"""Shared fixtures: a private RECSYS_HOME per test, real MariaDB databases and Redis DBs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / "var" / "airflow-test"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MARIADB_ROOT_URL = os.environ.get("RECSYS_TEST_MARIADB", "mysql+mysqldb://root@127.0.0.1:3306")
REDIS_TEST_URL = os.environ.get("RECSYS_TEST_REDIS", "redis://127.0.0.1:6379/15")

_SERVICE_VARS = (
    "RECSYS_REPLICA_URL",
    "RECSYS_DB_URL",
    "RECSYS_KV_URL",
    "RECSYS_MILVUS_URI",
    "RECSYS_TFSERVING_URL",
    "MLFLOW_TRACKING_URI",
    "RECSYS_MLFLOW_ARTIFACT_ROOT",
    "RECSYS_SERVING_BASE_PATH",
)


@pytest.fixture
def recsys_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private RECSYS_HOME with every backend on its embedded default."""
    home = tmp_path / "recsys_home"
    home.mkdir()
    monkeypatch.setenv("RECSYS_HOME", str(home))
    for name in _SERVICE_VARS:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def settings(recsys_home: Path):  # type: ignore[no-untyped-def]
    from tasks.core.settings import load_settings

    return load_settings(recsys_home)


def _mariadb_available() -> bool:
    import sqlalchemy as sa

    try:
        with sa.create_engine(MARIADB_ROOT_URL + "/").connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """A fresh, empty MariaDB database; yields its SQLAlchemy URL and drops it after."""
    import sqlalchemy as sa

    if not _mariadb_available():
        pytest.fail(f"MariaDB is not reachable at {MARIADB_ROOT_URL} (run scripts/services.sh)")
    name = f"rt_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MARIADB_ROOT_URL + "/")
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield f"{MARIADB_ROOT_URL}/{name}?charset=utf8mb4&local_infile=1"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis DB 15, flushed before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover - environment failure
        pytest.fail(f"Redis is not reachable at {REDIS_TEST_URL}: {exc}")
    client.flushdb()
    yield REDIS_TEST_URL
    client.flushdb()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop Milvus Lite servers while logging still has open streams.

    milvus_lite otherwise stops them from an atexit hook after pytest closed its captured
    streams, and its farewell log lines end the run with "I/O operation on closed file".
    """
    import sys

    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:
        manager.server_manager_instance.release_all()
