"""The real GTID replica of the stack (``scripts/stack_mariadb.py``): read-only, never written
by extraction, and its faults.

* the replica is a GTID replica with ``read_only=ON``; ``recsys_ro`` may read and look at
  the replication status, nothing else; the recsys DB is not there;
* the default extraction path (replica on another server, read-only account) streams, every
  replica read is in a read-only session: a write through the pipeline's replica connection
  is refused (1792) and the replica's binlog holds no transaction of its own afterwards;
* SQL thread stopped (lag NULL): extraction fails naming the NULL lag and the thread
  state, stages nothing, and after ``START REPLICA`` stages every primary row of the window
  once (the rows written while the thread was stopped included);
* replica delayed past the limit (``MASTER_DELAY``): the sensor's check says "not yet"
  while behind and "go" once caught up; the DAG's sensor pokes in reschedule mode.

Rows are this module's own (ids from 7,000,000, year 2001) on the stack's shared primary,
removed afterwards; each test stages into a private ``recsys_sys_*`` DB on the primary
(filtered out of replication like ``recsys``), so the stack's own watermarks are untouched.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tasks.core import schema
from tasks.data.extract import (
    ReplicaLagError,
    copy_method,
    extract_interval,
    read_replica_status,
    replica_engine,
    replica_ready,
    replica_select,
)
from tests.integration.extract_data import DAY, DAY0, tiny_world

pytestmark = pytest.mark.system

ID_BASE = 7_000_000
T0 = datetime(2001, 1, 1)
SHIFT = T0 - DAY0
READ_ONLY_TXN = 1792  # Cannot execute statement in a READ ONLY transaction
READ_ONLY_SERVER = 1290  # --read-only option
DENIED = 1142  # command denied to user


def _env(stack: Any) -> Mapping[str, str]:
    """The stack fixture's environment (a mapping, or an object with ``.env``)."""
    env = getattr(stack, "env", stack)
    return env() if callable(env) else env


@dataclass(frozen=True)
class Pair:
    primary: sa.Engine  # root, business DB
    replica_admin: sa.Engine  # root on the replica (bypasses read_only): fault injection
    replica_url: str  # recsys_ro
    recsys_url: str  # the stack's recsys account
    max_lag_s: float

    def caught_up(self, timeout_s: float = 60) -> None:
        """Wait until the replica applied everything the primary binlogged."""
        with self.primary.connect() as conn:
            target = conn.execute(sa.text("SELECT @@GLOBAL.gtid_binlog_pos")).scalar_one()
        with self.replica_admin.connect() as conn:
            got = conn.execute(
                sa.text("SELECT MASTER_GTID_WAIT(:pos, :t)"), {"pos": target, "t": timeout_s}
            ).scalar_one()
        assert got == 0, f"replica did not reach {target} in {timeout_s}s"

    def replica_sql(self, *statements: str) -> None:
        with self.replica_admin.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))


@pytest.fixture(scope="module")
def pair(stack) -> Iterator[Pair]:  # type: ignore[no-untyped-def]
    env = _env(stack)
    primary_url = env["RECSYS_STACK_PRIMARY_URL"]
    replica_url = env["RECSYS_STACK_REPLICA_URL"]
    ro = sa.make_url(replica_url)
    admin_url = sa.URL.create(
        ro.drivername, username="root", host=ro.host, port=ro.port, database=ro.database
    )
    primary = sa.create_engine(primary_url)
    admin = sa.create_engine(admin_url)
    got = Pair(
        primary,
        admin,
        replica_url,
        env["RECSYS_STACK_RECSYS_DB_URL"],
        float(env.get("RECSYS_MAX_REPLICA_LAG_S", 300)),
    )
    _delete_ours(primary)
    try:
        yield got
    finally:
        got.replica_sql("START REPLICA")  # whatever a failed test left stopped
        _delete_ours(primary)
        primary.dispose()
        admin.dispose()


@pytest.fixture(autouse=True)
def _clean(pair: Pair) -> Iterator[None]:
    """This module's rows removed from the primary (and so the replica) around each test."""
    _delete_ours(pair.primary)
    yield
    _delete_ours(pair.primary)


@pytest.fixture
def scratch_recsys(pair: Pair) -> Iterator[str]:
    """A private recsys DB on the primary's server (never on the replica)."""
    name = f"recsys_sys_{uuid.uuid4().hex[:10]}"
    with pair.primary.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = sa.make_url(str(pair.primary.url)).set(database=name)
    try:
        yield url.update_query_dict({"local_infile": "1"}).render_as_string(hide_password=False)
    finally:
        with pair.primary.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))


def _ours() -> dict[str, list[dict[str, Any]]]:
    """``tiny_world`` moved to ids from ``ID_BASE`` and to 2001 (no clash with stack data)."""
    world = tiny_world()
    for rows in world.values():
        for row in rows:
            for key in ("user_id", "artist_id", "illust_id"):
                if row.get(key) is not None:
                    row[key] += ID_BASE
            for key in ("create_time", "update_time"):
                if row.get(key) is not None:
                    row[key] += SHIFT
    return world


def _delete_ours(primary: sa.Engine) -> None:
    with primary.begin() as conn:
        for name in ("interactions", "follows", "illusts", "users"):
            table = schema.BUSINESS_TABLES[name]
            key = table.c.illust_id if name == "illusts" else table.c.user_id
            conn.execute(sa.delete(table).where(key >= ID_BASE, key < ID_BASE + 1_000_000))


def _insert(primary: sa.Engine, world: Mapping[str, list[dict[str, Any]]]) -> None:
    with primary.begin() as conn:
        for name in ("users", "illusts", "follows", "interactions"):
            if world.get(name):
                conn.execute(sa.insert(schema.BUSINESS_TABLES[name]), world[name])


def _settings(settings, pair: Pair, recsys_url: str, **kw):  # type: ignore[no-untyped-def]
    return settings.replace(replica_url=pair.replica_url, recsys_db_url=recsys_url, **kw)


def _window_rows(primary: sa.Engine, name: str, lower: str | None, end: datetime) -> Counter:
    low = datetime.fromisoformat(lower) if lower else None
    with primary.connect() as conn:
        return Counter(tuple(r) for r in conn.execute(replica_select(name, low, end)))


def _staged_rows(recsys_url: str, name: str) -> Counter:
    staging = schema.STAGING_TABLES[name]
    columns = [staging.c[c.name] for c in schema.BUSINESS_TABLES[name].columns]
    engine = sa.create_engine(recsys_url)
    try:
        with engine.connect() as conn:
            return Counter(tuple(r) for r in conn.execute(sa.select(*columns)))
    finally:
        engine.dispose()


def test_replica_is_a_read_only_gtid_replica_without_the_recsys_db(pair: Pair) -> None:
    ro = sa.create_engine(pair.replica_url)
    try:
        status = read_replica_status(ro)  # as recsys_ro: SLAVE MONITOR suffices
        assert status is not None
        assert status["Using_Gtid"] == "Slave_Pos"
        assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")
        with ro.connect() as conn:
            assert conn.execute(sa.text("SELECT @@GLOBAL.read_only")).scalar_one() == 1
            grants = " ".join(r[0] for r in conn.execute(sa.text("SHOW GRANTS")))
        assert "SELECT ON `pixiv`.*" in grants and "SLAVE MONITOR" in grants
        assert "INSERT" not in grants and "ALL PRIVILEGES" not in grants
        # a plain recsys_ro session (no read-only transaction) is refused by the server too
        with pytest.raises(sa.exc.OperationalError) as refused, ro.begin() as conn:
            conn.execute(sa.delete(schema.users).where(schema.users.c.user_id == -1))
        assert refused.value.orig.args[0] in (READ_ONLY_SERVER, DENIED)
    finally:
        ro.dispose()
    with pair.replica_admin.connect() as conn:
        databases = set(conn.execute(sa.text("SHOW DATABASES")).scalars())
    assert "pixiv" in databases
    assert not {d for d in databases if d.startswith("recsys")}, databases
    # replication carries a primary write
    _insert(pair.primary, {"users": [_ours()["users"][0]]})
    pair.caught_up()
    with pair.replica_admin.connect() as conn:
        n = conn.execute(
            sa.select(sa.func.count()).where(schema.users.c.user_id == ID_BASE + 1)
        ).scalar_one()
    assert n == 1


def test_default_extraction_never_writes_the_replica(
    pair: Pair, scratch_recsys: str, settings
) -> None:  # type: ignore[no-untyped-def]
    # the stack's own URLs pick a path that only reads the replica
    assert copy_method(sa.make_url(pair.replica_url), sa.make_url(pair.recsys_url), None) in (
        "load_data",
        "insert",
    )
    world = _ours()
    _insert(pair.primary, world)
    pair.caught_up()
    s = _settings(settings, pair, scratch_recsys)
    engine = replica_engine(s)
    with pytest.raises(sa.exc.OperationalError) as refused, engine.begin() as conn:
        conn.execute(sa.delete(schema.users).where(schema.users.c.user_id >= ID_BASE))
    # the server's read_only answers first (1290); the session is read-only as well
    assert refused.value.orig.args[0] in (READ_ONLY_SERVER, READ_ONLY_TXN)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT @@SESSION.tx_read_only")).scalar_one() == 1
    result = extract_interval(
        s, T0, T0 + DAY, run_id="sys-default", allow_no_replication=False, lag_wait_s=0
    )
    assert result.replica_lag_s is not None and result.replica_lag_s <= s.max_replica_lag_s
    ours_day0 = [u for u in world["users"] if u["create_time"] < T0 + DAY]
    assert len(ours_day0) == 5
    staged_users = _staged_rows(scratch_recsys, "users")
    assert {r[0] for r in staged_users} >= {u["user_id"] for u in ours_day0}
    for name in schema.BUSINESS_TABLES:
        expected = _window_rows(pair.primary, name, result.lower_bounds[name], T0 + DAY)
        assert _staged_rows(scratch_recsys, name) == expected, name
    # the replica's binlog holds only the primary's transactions (server_id 1): nothing was
    # ever executed on the replica itself (it would be a 0-2-N GTID)
    with pair.replica_admin.connect() as conn:
        binlog_pos = conn.execute(sa.text("SELECT @@GLOBAL.gtid_binlog_pos")).scalar_one()
    assert all(part.split("-")[1] == "1" for part in binlog_pos.split(",") if part), binlog_pos


def test_sql_thread_stopped_fails_then_recovers_without_gap_or_duplicate(
    pair: Pair, scratch_recsys: str, settings
) -> None:  # type: ignore[no-untyped-def]
    world = _ours()
    late = [
        i for i in world["interactions"] if T0 + timedelta(hours=10) <= i["create_time"] < T0 + DAY
    ]
    early = {**world, "interactions": [i for i in world["interactions"] if i not in late]}
    assert late and early["interactions"]
    _insert(pair.primary, early)
    pair.caught_up()
    s = _settings(settings, pair, scratch_recsys)
    pair.replica_sql("STOP REPLICA SQL_THREAD")
    try:
        _insert(pair.primary, {"interactions": late})  # reaches the relay log, not applied
        with pytest.raises(ReplicaLagError) as failed:
            extract_interval(
                s, T0, T0 + DAY, run_id="sys-null", allow_no_replication=False, lag_wait_s=0
            )
        message = str(failed.value)
        assert "Seconds_Behind_Master is NULL" in message
        assert "SQL thread='No'" in message and "IO thread='Yes'" in message
        with pytest.raises(ReplicaLagError, match="NULL"):
            replica_ready(s, allow_no_replication=False)  # the DAG's sensor fails the same way
        for name in schema.BUSINESS_TABLES:  # nothing staged by the failed run
            assert _staged_rows(scratch_recsys, name) == Counter(), name
    finally:
        pair.replica_sql("START REPLICA SQL_THREAD")
    pair.caught_up()
    result = extract_interval(
        s, T0, T0 + DAY, run_id="sys-after", allow_no_replication=False, lag_wait_s=0
    )
    late_keys = {(i["user_id"], i["illust_id"], i["create_time"]) for i in late}
    staged = _staged_rows(scratch_recsys, "interactions")
    assert late_keys <= {(r[0], r[1], r[3]) for r in staged}  # no gap
    assert max(staged.values()) == 1  # no duplicate
    for name in schema.BUSINESS_TABLES:
        expected = _window_rows(pair.primary, name, result.lower_bounds[name], T0 + DAY)
        assert _staged_rows(scratch_recsys, name) == expected, name
    ours = [k for k in staged if k[0] >= ID_BASE]
    assert len(ours) == sum(
        1
        for i in world["interactions"]
        if T0 - timedelta(minutes=10) <= i["create_time"] < T0 + DAY
    )


def test_delayed_replica_waits_then_proceeds(pair: Pair, scratch_recsys: str, settings) -> None:  # type: ignore[no-untyped-def]
    """``MASTER_DELAY`` past the limit: the sensor's check says "not yet" while the replica
    is behind, "go" once it caught up; extraction then sees the delayed row."""
    delay_s, limit_s = 15, 4
    s = _settings(settings, pair, scratch_recsys, max_replica_lag_s=float(limit_s))
    user = _ours()["users"][0]
    pair.replica_sql("STOP REPLICA", f"CHANGE MASTER TO MASTER_DELAY={delay_s}", "START REPLICA")
    try:
        time.sleep(1)
        _insert(pair.primary, {"users": [{**user, "create_time": T0 - timedelta(days=1)}]})
        pokes: list[bool] = []
        began = time.monotonic()
        while time.monotonic() - began < 3 * delay_s:
            pokes.append(replica_ready(s, allow_no_replication=False))
            if pokes[-1] and False in pokes:
                break
            time.sleep(1)
        waited = time.monotonic() - began
    finally:
        pair.replica_sql("STOP REPLICA", "CHANGE MASTER TO MASTER_DELAY=0", "START REPLICA")
    assert False in pokes, f"lag never exceeded {limit_s}s: {pokes}"
    assert pokes[-1] is True, f"replica never caught up: {pokes}"
    assert pokes[: pokes.index(False)].count(True) <= limit_s + 1  # behind only after ~limit
    assert limit_s <= waited <= 3 * delay_s
    result = extract_interval(
        s, T0, T0 + DAY, run_id="sys-delay", allow_no_replication=False, lag_wait_s=0
    )
    assert result.rows["users"] >= 1
    assert user["user_id"] in {r[0] for r in _staged_rows(scratch_recsys, "users")}


EXTRACT_DAG = "recsys_extract_validate"
LATE_DAY = datetime(2026, 6, 1)  # after the pipeline test's data span (2026-01): nothing else


def _task_state(airflow_api, run_id: str, task_id: str) -> str | None:  # type: ignore[no-untyped-def]
    for ti in airflow_api.task_instances(EXTRACT_DAG, run_id):
        if ti["task_id"] == task_id:
            return ti["state"]
    return None


def test_delayed_replica_reschedules_the_dag_sensor_then_extracts(
    pair: Pair,
    airflow_api,
    stack,  # type: ignore[no-untyped-def]
) -> None:
    """Through Airflow on the Celery workers: with the replica ``MASTER_DELAY``-ed past the
    run's ``max_replica_lag_s``, ``wait_for_replica`` is ``up_for_reschedule`` (it gave its
    worker slot back, no try used); once the delay is lifted the same try succeeds and
    ``extract`` stages the row that was delayed. The interval has no interactions, so
    ``publish_validated`` is skipped: no training run starts."""
    from tasks.core.settings import load_settings
    from tests.system.conftest import wait_until

    limit_s, delay_s = 5, 180
    user = {**_ours()["users"][0], "create_time": LATE_DAY + timedelta(hours=1)}
    s = load_settings(_env(stack)["RECSYS_HOME"]).replace(
        replica_url=pair.replica_url, max_replica_lag_s=float(limit_s)
    )
    states: list[str | None] = []
    pair.replica_sql("STOP REPLICA", f"CHANGE MASTER TO MASTER_DELAY={delay_s}", "START REPLICA")
    try:
        _insert(pair.primary, {"users": [user]})

        def lagging() -> bool:
            try:
                return not replica_ready(s, allow_no_replication=False)
            except ReplicaLagError:  # just restarted: lag NULL while the IO thread connects
                return False

        wait_until(lagging, 60, f"the replica more than {limit_s}s behind")
        airflow_api.unpause(EXTRACT_DAG)
        run_id = airflow_api.trigger(
            EXTRACT_DAG,
            {
                "interval_start": f"{LATE_DAY.isoformat()}+00:00",
                "interval_end": f"{(LATE_DAY + DAY).isoformat()}+00:00",
                "max_replica_lag_s": limit_s,
            },
        )

        def rescheduled() -> bool:
            states.append(_task_state(airflow_api, run_id, "wait_for_replica"))
            assert states[-1] != "success", f"sensor passed while the replica lags: {states}"
            return states[-1] == "up_for_reschedule"

        wait_until(rescheduled, delay_s - 30, "wait_for_replica up_for_reschedule")
        assert _task_state(airflow_api, run_id, "extract") in (None, "none", "scheduled")
    finally:
        pair.replica_sql("STOP REPLICA", "CHANGE MASTER TO MASTER_DELAY=0", "START REPLICA")
    try:
        assert airflow_api.wait_run(EXTRACT_DAG, run_id, timeout_s=300) == "success"
        tries = airflow_api.tries(EXTRACT_DAG, run_id, "wait_for_replica")
        assert [t["try_number"] for t in tries] == [1], tries  # rescheduled, not retried
        assert _task_state(airflow_api, run_id, "extract") == "success"
        assert _task_state(airflow_api, run_id, "publish_validated") == "skipped"
        mirror = sa.create_engine(pair.recsys_url)
        try:
            with mirror.connect() as conn:
                found = conn.execute(
                    sa.select(schema.mirror_users.c.user_id).where(
                        schema.mirror_users.c.user_id == user["user_id"]
                    )
                ).all()
            assert found == [(user["user_id"],)]
        finally:
            with mirror.begin() as conn:
                conn.execute(
                    sa.delete(schema.mirror_users).where(schema.mirror_users.c.user_id >= ID_BASE)
                )
            mirror.dispose()
    finally:
        airflow_api.pause(EXTRACT_DAG)
