"""The pipeline's replica connection never writes, whatever the account may do.

On the 3306 MariaDB with the *root* account (which could write): every session of
``replica_engine`` is read-only, so a write through it is refused with error 1792, through
SQLAlchemy and through a raw DBAPI connection of its pool (the LOAD DATA path's), while
extraction through it still works. SQLite's replica engine refuses writes as well.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tasks.core import schema
from tasks.core.db import get_engine
from tasks.data.extract import copy_method, extract_interval, replica_engine, replica_ready
from tests.integration.extract_data import DAY, DAY0, seed_replica, tiny_world

READ_ONLY_TXN = 1792  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


@pytest.mark.mariadb
def test_write_through_replica_connection_is_refused(mariadb_database, settings) -> None:  # type: ignore[no-untyped-def]
    seed_replica(get_engine(mariadb_database), tiny_world())
    s = settings.replace(replica_url=mariadb_database)
    users = schema.BUSINESS_TABLES["users"]
    before = _count(get_engine(mariadb_database), users)
    assert before == len(tiny_world()["users"]) == 6
    engine = replica_engine(s)
    with pytest.raises(sa.exc.OperationalError) as refused, engine.begin() as conn:
        conn.execute(sa.delete(users))
    assert refused.value.orig.args[0] == READ_ONLY_TXN
    assert "READ ONLY transaction" in str(refused.value)
    autocommit_conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    with pytest.raises(sa.exc.OperationalError) as autocommit, autocommit_conn as conn:
        conn.execute(sa.insert(users).values(user_id=999, username="x"))  # no transaction
    assert autocommit.value.orig.args[0] == READ_ONLY_TXN
    raw = engine.raw_connection()  # what the LOAD DATA path streams from
    try:
        cursor = raw.cursor()
        with pytest.raises(Exception) as raw_refused:
            cursor.execute("UPDATE users SET username = 'changed'")
        assert raw_refused.value.args[0] == READ_ONLY_TXN
        cursor.execute("SELECT @@SESSION.tx_read_only")
        assert cursor.fetchone()[0] == 1
        cursor.close()
    finally:
        raw.close()
    assert _count(get_engine(mariadb_database), users) == before  # nothing written
    # the ordinary engine of the same URL is unaffected (it is what seeds tests)
    with get_engine(mariadb_database).connect() as conn:
        assert conn.execute(sa.text("SELECT @@SESSION.tx_read_only")).scalar_one() == 0


@pytest.mark.mariadb
def test_extraction_streams_through_the_read_only_connection(
    mariadb_database, settings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Another account on the replica's server (the production shape) picks a streamed
    path; extraction succeeds with every replica read in a read-only session."""
    seed_replica(get_engine(mariadb_database), tiny_world())
    # same server, different "server" spelling (localhost vs 127.0.0.1 is another URL):
    replica_url = mariadb_database.replace("127.0.0.1", "localhost")
    recsys_url = f"sqlite:///{tmp_path / 'recsys.db'}"
    s = settings.replace(replica_url=replica_url, recsys_db_url=recsys_url)
    assert copy_method(sa.make_url(replica_url), sa.make_url(mariadb_database), None) == "load_data"
    statements: list[str] = []
    engine = replica_engine(s)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, *_args):  # type: ignore[no-untyped-def]
        cursor.execute("SELECT @@SESSION.tx_read_only")
        statements.append(f"{cursor.fetchone()[0]}:{statement.split()[0]}")

    try:
        assert replica_ready(s, allow_no_replication=True) is True
        result = extract_interval(s, DAY0, DAY0 + DAY, run_id="ro", allow_no_replication=True)
    finally:
        sa.event.remove(engine, "before_cursor_execute", _seen)
    assert result.rows["users"] == 5  # the 6th user is created after the first day
    assert statements and all(x.startswith("1:") for x in statements), statements
    assert any(x.endswith("SELECT") for x in statements)


def test_sqlite_replica_connection_is_read_only(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'replica.db'}"
    seed_replica(get_engine(url), tiny_world())
    engine = replica_engine(settings.replace(replica_url=url))
    with pytest.raises(sa.exc.OperationalError, match="readonly database"), engine.begin() as c:
        c.execute(sa.delete(schema.BUSINESS_TABLES["users"]))
    assert _count(get_engine(url), schema.BUSINESS_TABLES["users"]) == 6
    assert replica_ready(settings.replace(replica_url=url)) is True  # no replication to wait on


def test_dag_waits_for_the_replica_in_a_reschedule_sensor() -> None:
    """The lag wait holds no worker slot: a reschedule-mode sensor before ``extract``,
    and ``extract`` itself does not sleep on lag (``lag_wait_s=0``)."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    dags = Path(__file__).resolve().parents[2] / "dags"
    bag = DagBag(dag_folder=str(dags / "recsys_extract_validate.py"))
    assert bag.import_errors == {}
    dag = bag.get_dag("recsys_extract_validate")
    sensor = dag.get_task("wait_for_replica")
    assert sensor.mode == "reschedule"
    assert sensor.poke_interval == 30 and sensor.timeout == 6 * 3600
    assert sensor.pool != "recsys_replica"  # poking is not reading: no replica slot held
    assert dag.get_task("extract").upstream_task_ids == {"wait_for_replica"}
    source = (dags / "recsys_extract_validate.py").read_text()
    assert "lag_wait_s=0" in source
