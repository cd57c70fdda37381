"""Replica-lag decisions, the watermark lower-bound rule and the choice of copy method
(pure functions)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from tasks.data.bulk import local_infile_enabled
from tasks.data.extract import (
    ReplicaLagError,
    copy_method,
    decide_replica_lag,
    lower_bound,
    replica_select,
    wait_for_replica,
)

RUNNING = {"Slave_IO_Running": "Yes", "Slave_SQL_Running": "Yes"}


def test_null_lag_is_an_error_not_zero() -> None:
    row = {"Seconds_Behind_Master": None, "Slave_IO_Running": "No", "Slave_SQL_Running": "No"}
    with pytest.raises(ReplicaLagError, match="NULL"):
        decide_replica_lag(row, max_lag_s=300, allow_no_replication=True)


def test_lag_over_limit_is_not_ok_and_within_limit_is() -> None:
    over = decide_replica_lag(
        {**RUNNING, "Seconds_Behind_Master": 301}, max_lag_s=300, allow_no_replication=False
    )
    assert (over.ok, over.lag_s) == (False, 301.0)
    ok = decide_replica_lag(
        {**RUNNING, "Seconds_Behind_Master": 300}, max_lag_s=300, allow_no_replication=False
    )
    assert (ok.ok, ok.lag_s) == (True, 300.0)
    mysql8 = decide_replica_lag(
        {"Seconds_Behind_Source": 0}, max_lag_s=1, allow_no_replication=False
    )
    assert mysql8.ok and mysql8.lag_s == 0.0


def test_no_replication_only_when_allowed() -> None:
    check = decide_replica_lag(None, max_lag_s=300, allow_no_replication=True)
    assert check.ok and check.lag_s is None and "no replication" in check.reason
    with pytest.raises(ReplicaLagError, match="not a replica"):
        decide_replica_lag(None, max_lag_s=300, allow_no_replication=False)
    with pytest.raises(ValueError, match="-1"):
        decide_replica_lag(None, max_lag_s=-1, allow_no_replication=True)


def test_wait_polls_until_caught_up_then_gives_up() -> None:
    statuses = iter([{"Seconds_Behind_Master": 900}, {"Seconds_Behind_Master": 400},
                     {"Seconds_Behind_Master": 12}])  # fmt: skip
    slept: list[float] = []
    check = wait_for_replica(
        lambda: next(statuses), max_lag_s=300, allow_no_replication=False,
        wait_s=60, poll_s=5, sleep=slept.append,
    )  # fmt: skip
    assert check.lag_s == 12.0 and slept == [5, 5]

    slept.clear()
    with pytest.raises(ReplicaLagError, match="900s behind .* after waiting 15s"):
        wait_for_replica(
            lambda: {"Seconds_Behind_Master": 900}, max_lag_s=300, allow_no_replication=False,
            wait_s=15, poll_s=5, sleep=slept.append,
        )  # fmt: skip
    assert slept == [5, 5, 5]


def test_lower_bound_rule() -> None:
    start, ten = datetime(2024, 1, 5), timedelta(minutes=10)
    # first run: dimensions are a snapshot, interactions start at the interval
    assert lower_bound("users", None, start, ten) is None
    assert lower_bound("interactions", None, start, ten) == datetime(2024, 1, 4, 23, 50)
    # normal run: watermark == start
    assert lower_bound("illusts", start, start, ten) == datetime(2024, 1, 4, 23, 50)
    # backfill of an older interval: still reads its own window
    assert lower_bound("illusts", datetime(2024, 1, 9), start, ten) == datetime(2024, 1, 4, 23, 50)
    # re-running the first interval (or an older one) re-reads the snapshot
    assert lower_bound("users", datetime(2024, 1, 9), start, ten, low_water=start) is None
    assert lower_bound("interactions", datetime(2024, 1, 9), start, ten, start) == datetime(
        2024, 1, 4, 23, 50
    )
    assert lower_bound("users", datetime(2024, 1, 9), start, ten, datetime(2024, 1, 2)) == (
        datetime(2024, 1, 4, 23, 50)
    )
    # gap since the last run is caught up
    assert lower_bound("follows", datetime(2024, 1, 2), start, ten) == datetime(2024, 1, 1, 23, 50)


def test_illusts_window_reads_updated_or_created_rows() -> None:
    sql = str(replica_select("illusts", datetime(2024, 1, 1), datetime(2024, 1, 2)))
    assert "illusts.update_time >=" in sql and "illusts.create_time >=" in sql and " OR " in sql
    sql = str(replica_select("interactions", None, datetime(2024, 1, 2)))
    assert "interactions.create_time <" in sql and ">=" not in sql


REPLICA = "mysql+mysqldb://reader:pw@replica:3306/pixiv"
RECSYS = "mysql+mysqldb://writer:pw@recsys:3306/recsys?charset=utf8mb4"


@pytest.mark.parametrize(
    ("replica", "recsys", "server_side_copy", "expected"),
    [
        # one server and one account: the server copies the rows itself
        (REPLICA, "mysql+mysqldb://reader:pw@replica:3306/recsys", None, "insert_select"),
        (REPLICA, "mysql+mysqldb://reader:pw@replica/recsys?local_infile=1", False, "load_data"),
        (REPLICA, "mysql+mysqldb://reader:pw@replica:3306/recsys", False, "insert"),
        # two servers: LOAD DATA only when the recsys URL allows LOCAL INFILE
        (REPLICA, RECSYS, None, "insert"),
        (REPLICA, RECSYS + "&local_infile=1", None, "load_data"),
        (REPLICA, RECSYS + "&local_infile=True", None, "load_data"),  # Airflow extra's form
        (REPLICA, RECSYS + "&local_infile=0", None, "insert"),
        ("sqlite:////tmp/replica.db", RECSYS + "&local_infile=1", None, "insert"),
        (REPLICA, "sqlite:////tmp/recsys.db", None, "executemany"),
        ("sqlite:////tmp/replica.db", "sqlite:////tmp/recsys.db", False, "executemany"),
    ],
)
def test_copy_method(
    replica: str, recsys: str, server_side_copy: bool | None, expected: str
) -> None:
    got = copy_method(sa.make_url(replica), sa.make_url(recsys), server_side_copy)
    assert got == expected


def test_server_side_copy_across_servers_is_refused() -> None:
    with pytest.raises(ValueError, match="one MySQL server"):
        copy_method(sa.make_url(REPLICA), sa.make_url(RECSYS), True)


def test_local_infile_enabled() -> None:
    assert [
        local_infile_enabled(f"mysql://h/d?local_infile={v}") for v in ("1", "true", "True")
    ] == [True] * 3
    assert [local_infile_enabled(u) for u in ("mysql://h/d?local_infile=0", "mysql://h/d")] == [
        False
    ] * 2
