"""Extraction + validation against real databases (SQLite files and MariaDB).

Covers: idempotent re-runs, backfill of N intervals == one run over their union, every kind
of bad row quarantined and reported, re-run after the replica is fixed, the read-only
replica account, and the real ``SHOW REPLICA STATUS`` on a non-replica server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.core import schema
from tasks.core.db import get_engine
from tasks.data import extract as extract_module
from tasks.data.extract import (
    ReplicaLagError,
    copy_method,
    extract_interval,
    read_replica_status,
    row_numbering,
)
from tasks.data.validate import DataValidationError, validate_interval
from tests.conftest import MARIADB_ROOT_URL
from tests.integration.extract_data import (
    DAY,
    DAY0,
    seed_replica,
    table_rows,
    tags_json,
    tiny_world,
)

BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.fixture
def second_mariadb_database() -> Iterator[str]:
    name = f"rt_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MARIADB_ROOT_URL + "/")
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield f"{MARIADB_ROOT_URL}/{name}?charset=utf8mb4"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def make_settings(request, settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: fresh (replica, recsys) settings on the chosen backend, seeded with a world."""
    created: list[str] = []

    def factory(world, name: str = "a"):  # type: ignore[no-untyped-def]
        home = tmp_path / name
        if request.param == "sqlite":
            s = settings.replace(
                home=home,
                replica_url=f"sqlite:///{home / 'replica.db'}",
                recsys_db_url=f"sqlite:///{home / 'recsys.db'}",
            )
        else:
            urls = []
            admin = sa.create_engine(MARIADB_ROOT_URL + "/")
            for _ in range(2):
                db = f"rt_{uuid.uuid4().hex[:12]}"
                with admin.begin() as conn:
                    conn.execute(sa.text(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
                created.append(db)
                urls.append(f"{MARIADB_ROOT_URL}/{db}?charset=utf8mb4")
            admin.dispose()
            s = settings.replace(home=home, replica_url=urls[0], recsys_db_url=urls[1])
        seed_replica(get_engine(s.replica_url), world)
        return s

    yield factory
    if created:
        admin = sa.create_engine(MARIADB_ROOT_URL + "/")
        with admin.begin() as conn:
            for db in created:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db}`"))
        admin.dispose()


def _run(s, start, end, run_id, *, data_docs=False):  # type: ignore[no-untyped-def]
    extract_interval(s, start, end, run_id=run_id)
    return validate_interval(s, start, end, run_id=run_id, data_docs=data_docs)


def _mirror(s) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    engine = get_engine(s.recsys_db_url)
    return {name: table_rows(engine, table) for name, table in schema.MIRROR_TABLES.items()}


def _quarantine(s) -> list[tuple]:  # type: ignore[no-untyped-def]
    return table_rows(get_engine(s.recsys_db_url), schema.quarantine, exclude=("id",))


def test_rerun_is_idempotent(make_settings) -> None:  # type: ignore[no-untyped-def]
    s = make_settings(tiny_world())
    first = _run(s, DAY0, DAY0 + DAY, "run1", data_docs=True)
    engine = get_engine(s.recsys_db_url)
    staging_before = table_rows(
        engine, schema.STAGING_TABLES["interactions"], exclude=("run_id", "row_seq")
    )
    mirror_before = _mirror(s)
    second = _run(s, DAY0, DAY0 + DAY, "run1-retry")
    assert _mirror(s) == mirror_before
    assert (
        table_rows(engine, schema.STAGING_TABLES["interactions"], exclude=("run_id", "row_seq"))
        == staging_before
    )
    assert first.rows_read == second.rows_read
    # hand count: users 1-4 created before DAY0 + user 5 on day 0; 8 illusts all created
    # before the end of day 0; 2 follows before day 1
    assert first.rows_read["users"] == 5 and first.rows_read["illusts"] == 8
    assert first.rows_read["follows"] == 2
    assert first.success and first.failures == []
    assert Path(first.data_docs.removeprefix("file://")).exists()
    with engine.connect() as conn:
        marks = conn.execute(sa.select(schema.watermarks)).all()
    assert {(m.high_water, m.low_water) for m in marks} == {(DAY0 + DAY, DAY0)}


def test_backfill_equals_one_run_over_the_range(make_settings) -> None:  # type: ignore[no-untyped-def]
    world = tiny_world()
    daily = make_settings(world, "daily")
    # out of order on purpose: a newer interval first, then the older one it skipped
    for day in (1, 0, 2):
        _run(daily, DAY0 + day * DAY, DAY0 + (day + 1) * DAY, f"day{day}")
    once = make_settings(world, "once")
    _run(once, DAY0, DAY0 + 3 * DAY, "range")
    daily_mirror, once_mirror = _mirror(daily), _mirror(once)
    assert daily_mirror == once_mirror
    assert len(once_mirror["interactions"]) == len(world["interactions"])
    assert len(once_mirror["users"]) == 6 and len(once_mirror["follows"]) == 4
    with get_engine(daily.recsys_db_url).connect() as conn:
        marks = conn.execute(sa.select(schema.watermarks)).all()
    # never moved backwards by day 0; low water went down to it
    assert {(m.high_water, m.low_water) for m in marks} == {(DAY0 + 3 * DAY, DAY0)}


def _bad_world() -> dict:  # type: ignore[type-arg]
    world = tiny_world()
    illusts = {row["illust_id"]: row for row in world["illusts"]}
    illusts[101]["width"] = 0
    illusts[102]["tags"] = "{not json"
    illusts[103]["tags"] = '[{"name": "only a name"}]'
    illusts[104]["create_time"] = DAY0 + 5 * DAY  # in the future of the data interval
    illusts[104]["update_time"] = DAY0 + timedelta(hours=1)
    when = DAY0 + timedelta(hours=20)
    world["interactions"] += [
        {"user_id": 1, "illust_id": 105, "label": 2, "create_time": when},
        {"user_id": 999, "illust_id": 105, "label": 0, "create_time": when},
        {"user_id": None, "illust_id": 105, "label": 0, "create_time": when},
        {"user_id": 2, "illust_id": 106, "label": 1, "create_time": when},
        {"user_id": 2, "illust_id": 106, "label": 1, "create_time": when},  # duplicate key
    ]
    return world


EXPECTED_QUARANTINE = {
    ("illusts", "illust_id=101", "expect_column_values_to_be_between:width"),
    ("illusts", "illust_id=102", "expect_column_values_to_be_json_parseable:tags"),
    ("illusts", "illust_id=103", "expect_column_values_to_match_json_schema:tags_checked"),
    ("illusts", "illust_id=104", "expect_column_values_to_be_between:create_time"),
    (
        "interactions",
        "user_id=1|illust_id=105|create_time=2024-01-01 20:00:00|label=2",
        "expect_column_values_to_be_in_set:label",
    ),
    (
        "interactions",
        "user_id=999|illust_id=105|create_time=2024-01-01 20:00:00|label=0",
        "expect_column_values_to_be_in_set:user_known",
    ),
    (
        "interactions",
        "user_id=None|illust_id=105|create_time=2024-01-01 20:00:00|label=0",
        "expect_column_values_to_not_be_null:user_id",
    ),
    (
        "interactions",
        "user_id=2|illust_id=106|create_time=2024-01-01 20:00:00|label=1",
        "expect_column_values_to_be_in_set:key_count",
    ),
}


def test_bad_rows_quarantined_reported_and_picked_up_after_fix(make_settings) -> None:  # type: ignore[no-untyped-def]
    world = _bad_world()
    s = make_settings(world)
    with pytest.raises(DataValidationError) as caught:
        _run(s, DAY0, DAY0 + DAY, "bad1")
    message = str(caught.value)
    for _, _, expectation in EXPECTED_QUARANTINE:
        assert expectation.split(":")[0] in message
    assert "1 unexpected rows" in message and "'width': 0" in message
    quarantine = _quarantine(s)
    keys = {(q[0], q[1], q[2]) for q in quarantine}
    assert keys >= EXPECTED_QUARANTINE
    # interactions on quarantined illusts are held back too (their illust is unknown)
    held_illusts = {k[1] for k in keys if k[0] == "illusts"}
    assert held_illusts == {"illust_id=101", "illust_id=102", "illust_id=103", "illust_id=104"}
    extra = keys - EXPECTED_QUARANTINE
    null_user = "user_id=None|illust_id=105|create_time=2024-01-01 20:00:00|label=0"
    assert ("interactions", null_user, "expect_column_values_to_be_in_set:user_known") in extra
    extra.discard(("interactions", null_user, "expect_column_values_to_be_in_set:user_known"))
    assert extra and all(k[2] == "expect_column_values_to_be_in_set:illust_known" for k in extra)
    mirror = _mirror(s)
    assert {r[0] for r in mirror["illusts"]} == {105, 106, 107, 108}
    assert not any(r[1] == 105 and r[0] in (1, 999) for r in mirror["interactions"])
    assert all(r[-1] is None for r in quarantine)  # resolved_run_id: still open

    # re-run without a fix: same failure, no duplicate quarantine rows
    with pytest.raises(DataValidationError):
        _run(s, DAY0, DAY0 + DAY, "bad2")
    assert _quarantine(s) == quarantine

    # fix the replica (as the business side would) and re-run the interval
    fixed = tiny_world()
    fixed["interactions"].append(
        {"user_id": 2, "illust_id": 106, "label": 1, "create_time": DAY0 + timedelta(hours=20)}
    )
    seed_replica(get_engine(s.replica_url), fixed)
    result = _run(s, DAY0, DAY0 + DAY, "fixed")
    assert result.success
    after = _quarantine(s)
    assert len(after) == len(quarantine)  # kept as an audit log ...
    assert {q[-1] for q in after} == {"fixed"}  # ... and all resolved by the fixing run
    mirror = _mirror(s)
    assert {r[0] for r in mirror["illusts"]} == set(range(101, 109))
    assert (2, 106, DAY0 + timedelta(hours=20), 1) in mirror["interactions"]


def test_warn_expectation_reports_but_passes(make_settings) -> None:  # type: ignore[no-untyped-def]
    world = tiny_world()
    world["illusts"][2]["total_bookmarks"] = 10_000  # more bookmarks than views: warn only
    s = make_settings(world)
    result = _run(s, DAY0, DAY0 + DAY, "warn")
    assert result.success
    [failure] = result.failures
    assert failure["severity"] == "warn" and failure["unexpected_count"] == 1
    assert failure["examples"][0]["illust_id"] == 103
    assert 103 in {r[0] for r in _mirror(s)["illusts"]}
    assert _quarantine(s) == []


@pytest.mark.mariadb
def test_replica_is_read_only_and_not_replicating(
    mariadb_database, second_mariadb_database, settings
) -> None:  # type: ignore[no-untyped-def]
    replica_db = mariadb_database.split("/")[-1].split("?")[0]
    user, password = f"ro_{uuid.uuid4().hex[:8]}", "ro-pass"
    admin = sa.create_engine(MARIADB_ROOT_URL + "/")
    seed_replica(get_engine(mariadb_database), tiny_world())
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        conn.execute(sa.text(f"GRANT SELECT ON `{replica_db}`.* TO '{user}'@'%'"))
        conn.execute(sa.text(f"GRANT SLAVE MONITOR ON *.* TO '{user}'@'%'"))
    try:
        ro_url = f"mysql+mysqldb://{user}:{password}@127.0.0.1:3306/{replica_db}?charset=utf8mb4"
        ro_engine = sa.create_engine(ro_url)
        with pytest.raises(sa.exc.OperationalError, match="denied"), ro_engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM interactions"))
        # this MariaDB is not a replica: the real status call says so
        assert read_replica_status(ro_engine) is None
        s = settings.replace(replica_url=ro_url, recsys_db_url=second_mariadb_database)
        with pytest.raises(ReplicaLagError, match="not a replica"):
            extract_interval(s, DAY0, DAY0 + DAY, run_id="strict", allow_no_replication=False)
        result = extract_interval(s, DAY0, DAY0 + DAY, run_id="ro", allow_no_replication=True)
        assert result.rows["users"] == 5 and result.replica_lag_s is None
        counts = {n: len(r) for n, r in tiny_world().items()}
        with ro_engine.connect() as conn:
            for name, table in schema.BUSINESS_TABLES.items():
                n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                assert n == counts[name]  # replica untouched
        ro_engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


@pytest.mark.mariadb
def test_every_copy_method_stages_the_same_rows(
    mariadb_database, second_mariadb_database, settings, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """insert_select, load_data, insert (multi-row literals) and executemany stage the
    same rows, text with every character LOAD DATA and SQL literals must escape included."""
    world = tiny_world()
    world["illusts"][0]["tags"] = tags_json("it's", 'back\\slash "quoted"', "猫 🐈", "%s")
    world["illusts"][2]["tags"] = "tab\there\nnewline\r\n\\N \\t literal \\"
    world["users"][0]["username"] = "O'Brien\\"
    world["users"][1]["username"] = "\\N"  # the text \N, not NULL
    world["users"][2]["username"] = None
    world["illusts"][1]["artist_id"] = None  # a NULL forces the value-by-value formatter
    world["interactions"][0]["label"] = None
    seed_replica(get_engine(mariadb_database), world)
    no_infile = second_mariadb_database.replace("&local_infile=1", "")
    s = settings.replace(replica_url=mariadb_database, recsys_db_url=no_infile)
    window = (DAY0, DAY0 + 2 * DAY)
    with_infile = s.replace(recsys_db_url=no_infile + "&local_infile=1")
    replica_url, recsys_url = sa.make_url(s.replica_url), sa.make_url(no_infile)
    infile_url = sa.make_url(with_infile.recsys_db_url)
    assert copy_method(replica_url, recsys_url, None) == "insert_select"  # one server
    assert copy_method(replica_url, recsys_url, False) == "insert"
    assert copy_method(replica_url, infile_url, False) == "load_data"
    other_account = recsys_url.set(username="someone_else")
    assert (
        copy_method(replica_url, other_account.update_query_dict({"local_infile": "1"}), None)
        == "load_data"
    )

    def staged_after(run_settings, **kwargs) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
        result = extract_interval(run_settings, *window, run_id="r", batch_size=7, **kwargs)
        recsys = get_engine(run_settings.recsys_db_url)
        rows = {}
        for name, table in schema.STAGING_TABLES.items():
            rows[name] = table_rows(recsys, table, exclude=("row_seq",))
            with recsys.connect() as conn:
                seqs = sorted(conn.execute(sa.select(table.c.row_seq)).scalars())
            assert seqs == list(range(len(rows[name]))), name  # row_seq numbers rows 0..n-1
        return result.rows, rows

    # re-running the first interval re-reads its snapshot, each time by another method
    counts, staged = staged_after(s, server_side_copy=False)  # insert
    for run_settings, kwargs in (
        (with_infile, {"server_side_copy": False}),  # load_data
        (s, {"server_side_copy": True}),  # insert_select (one server, one account)
    ):
        assert staged_after(run_settings, **kwargs) == (counts, staged), kwargs
    # MySQL's numbering (ROW_NUMBER() OVER (), no session variable) gives the same rows
    assert row_numbering(get_engine(s.recsys_db_url).dialect) == "variable"  # MariaDB
    monkeypatch.setattr(extract_module, "row_numbering", lambda dialect: "window")
    assert staged_after(s, server_side_copy=True) == (counts, staged)
    monkeypatch.undo()
    sqlite = s.replace(recsys_db_url=f"sqlite:///{s.home / 'recsys-copy.db'}")
    assert staged_after(sqlite) == (counts, staged)  # executemany
    assert counts["interactions"] > 0 and counts["illusts"] == len(world["illusts"])
    assert world["illusts"][0]["tags"] in {r[4] for r in staged["illusts"]}
    assert world["illusts"][2]["tags"] in {r[4] for r in staged["illusts"]}
    assert {"O'Brien\\", "\\N", None} <= {r[3] for r in staged["users"]}
    assert None in {r[3] for r in staged["illusts"]}
    with pytest.raises(ValueError, match="one MySQL server"):
        extract_interval(
            s.replace(replica_url=f"sqlite:///{s.home / 'x.db'}"), DAY0, DAY0 + DAY,
            run_id="x", server_side_copy=True,
        )  # fmt: skip


def _validate_in_child(s) -> str:  # type: ignore[no-untyped-def]
    """Runs in a spawned process: validate the first day, report the outcome as text."""
    try:
        result = validate_interval(s, DAY0, DAY0 + DAY, run_id="p")
        return f"ok {sum(result.rows_read.values())} rows, docs {bool(result.data_docs)}"
    except Exception as exc:  # reported to the parent, which asserts on it
        return f"{type(exc).__name__}: {exc}"


def test_concurrent_validations_share_one_gx_context(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Validations running side by side (a manual run beside a scheduled one) share one GX
    directory. Seen with a live scheduler: GX's CheckpointRelatedResourcesFreshnessError when
    two runs re-saved the same suites. Three processes, three recsys DBs, one GX context:
    all succeed and agree with a validation run alone."""
    import multiprocessing

    replica = f"sqlite:///{tmp_path / 'replica.db'}"
    seed_replica(get_engine(replica), tiny_world())
    runs = [
        settings.replace(
            home=tmp_path, replica_url=replica, recsys_db_url=f"sqlite:///{tmp_path / f'r{i}.db'}"
        )
        for i in range(4)
    ]
    for s in runs:
        extract_interval(s, DAY0, DAY0 + DAY, run_id="p")
    assert len({s.gx_dir for s in runs}) == 1
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        outcomes = pool.map(_validate_in_child, runs[:3])
    assert all(o.startswith("ok") and o.endswith("docs True") for o in outcomes), outcomes
    validate_interval(runs[3], DAY0, DAY0 + DAY, run_id="p", data_docs=False)
    assert _mirror(runs[0]) == _mirror(runs[1]) == _mirror(runs[2]) == _mirror(runs[3])


def test_overlong_strings_quarantined_with_column_and_length(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A 10 MB ``username`` (mirror column ``String(255)``) is quarantined, not loaded; a
    re-run after the fix picks the user up. SQLite only: a MariaDB replica's VARCHAR(255)
    could not even hold the bad row."""
    world = tiny_world()
    world["users"][0]["username"] = "x" * 255  # exactly the limit: fine
    world["users"][1]["username"] = "y" * 10_000_000  # 10 MB
    world["users"][2]["username"] = "z" * 256  # one over
    home = tmp_path / "long"
    s = settings.replace(
        home=home,
        replica_url=f"sqlite:///{home / 'replica.db'}",
        recsys_db_url=f"sqlite:///{home / 'recsys.db'}",
    )
    seed_replica(get_engine(s.replica_url), world)
    start = DAY0
    with pytest.raises(DataValidationError) as caught:
        _run(s, start, DAY0 + DAY, "long1", data_docs=True)
    assert "expect_column_value_lengths_to_be_between" in str(caught.value)
    assert len(str(caught.value)) < 20_000  # the 10 MB value is not copied into the message
    rows = {
        q[1]: q
        for q in _quarantine(s)
        if q[2] == "expect_column_value_lengths_to_be_between:username"
    }
    assert set(rows) == {"user_id=2", "user_id=3"}
    reason_2 = rows["user_id=2"][3]
    assert "username longer than 255 characters" in reason_2
    assert "has 10000000 characters" in reason_2
    assert "has 256 characters" in rows["user_id=3"][3]
    assert len(rows["user_id=2"][4]) < 5_000  # row_json is bounded
    assert {r[0] for r in _mirror(s)["users"]} == {1, 4, 5}
    assert ("x" * 255) in {r[1] for r in _mirror(s)["users"]}

    # GX names the validation runs after the Airflow run and table, not "__none__"
    runs = [p for p in s.gx_dir.rglob("*") if p.parent.parent.name == "validations"]
    assert runs and all(p.name != "__none__" for p in runs)
    assert {p.name for p in runs} >= {"long1__users", "long1__interactions"}

    world["users"][1]["username"] = "user2"
    world["users"][2]["username"] = "user3"
    seed_replica(get_engine(s.replica_url), world)
    assert _run(s, start, DAY0 + DAY, "long-fixed").success
    assert {r[0] for r in _mirror(s)["users"]} == {1, 2, 3, 4, 5}
    assert {q[-1] for q in _quarantine(s) if q[1] in ("user_id=2", "user_id=3")} == {"long-fixed"}
