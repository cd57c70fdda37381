"""Airflow Connections switch each backend; absent ones leave the embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_connections_override_embedded_defaults(
    recsys_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugins.connections import settings_from_connections

    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_DB", "mysql://reader:s3cret@127.0.0.1:3306/recsys")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_KV", "redis://:pw@127.0.0.1:6379/3")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", "milvus://vectors:19530")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_TFSERVING", "http://tfs:8501")
    s = settings_from_connections()
    assert s.recsys_db_url == "mysql+mysqldb://reader:s3cret@127.0.0.1:3306/recsys"
    assert s.kv_url == "redis://:pw@127.0.0.1:6379/3"
    assert s.milvus_uri == "http://vectors:19530"
    assert s.tfserving_url == "http://tfs:8501"
    assert s.replica_url == f"sqlite:///{recsys_home / 'replica.db'}"  # no connection: default


def test_mysql_connection_goes_through_the_provider_hook(
    recsys_home: Path, monkeypatch: pytest.MonkeyPatch, mariadb_database: str
) -> None:
    """A real MariaDB reached through MySqlHook's URI: the engine we build can query it."""
    import sqlalchemy as sa

    from plugins.connections import settings_from_connections

    db = mariadb_database.split("/")[-1].split("?")[0]
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_REPLICA", f"mysql://root@127.0.0.1:3306/{db}")
    s = settings_from_connections()
    assert s.replica_url.startswith("mysql+mysqldb://root@127.0.0.1:3306/")
    with sa.create_engine(s.replica_url).connect() as conn:
        assert conn.execute(sa.text("SELECT DATABASE()")).scalar_one() == db


def test_kv_hook_builds_a_working_redis_client(
    recsys_home: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    from plugins.hooks import RecsysKVHook

    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_KV", redis_url)
    kv = RecsysKVHook().get_conn()
    kv.set("hook:probe", b"1")
    assert kv.get("hook:probe") == b"1"
