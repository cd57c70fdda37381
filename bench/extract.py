"""Benchmark: ``extract_interval`` (replica -> staging) vs a plain streaming SELECT of the
same rows, on MariaDB, in the same run.

Replica and recsys DB live on one server here, so ``extract_interval``'s default is the
server-side ``INSERT ... SELECT`` copy (``ratio``). The paths used when the replica is another
server are measured too, forced with ``server_side_copy=False`` (separate connections, rows
through Python): ``load_data`` (recsys URL with ``local_infile=1``: ``load_data_ratio``) and
multi-row INSERTs (``insert_path_ratio``). See ``tasks.data.extract.copy_method``.

The floor is the plain streaming SELECT as this code base reads (SQLAlchemy,
``stream_results``); the same SELECT through a bare DB-API ``SSCursor`` (no row objects) is
reported beside it (``raw_cursor_select_rows_per_s``), as the strictest possible floor.
Ratios use each path's best of ``--repeats`` interleaved runs; ratios of the medians are
reported beside them (single runs here vary by +-20%).

The replica (database ``bench_extract_replica``) is seeded with ``--rows`` interactions in one
day by ``INSERT ... SELECT`` from MariaDB's sequence engine (fixed formula, so every run
sees the same data); the recsys DB is ``bench_extract_recsys``. Both databases are dropped
at the end. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from tasks.core import schema
from tasks.core.db import get_engine
from tasks.core.settings import load_settings
from tasks.data.extract import copy_method, extract_interval, replica_select

ROOT_URL = os.environ.get("RECSYS_TEST_MARIADB", "mysql+mysqldb://root@127.0.0.1:3306")
REPLICA_DB, RECSYS_DB = "bench_extract_replica", "bench_extract_recsys"
START, END = datetime(2024, 1, 1), datetime(2024, 1, 2)
OVERLAP = timedelta(minutes=10)


def seed(admin: sa.Engine, rows: int) -> None:
    with admin.begin() as conn:
        for db in (REPLICA_DB, RECSYS_DB):
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db}`"))
            conn.execute(sa.text(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
    replica = get_engine(f"{ROOT_URL}/{REPLICA_DB}?charset=utf8mb4")
    schema.create_business_schema(replica)
    with replica.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO interactions (user_id, illust_id, label, create_time) "
                "SELECT 1 + seq % 50000, 1 + (seq * 7919) % 200000, (seq % 7 = 0), "
                "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (seq * 86399 DIV :n) SECOND "
                f"FROM seq_1_to_{rows}"
            ),
            {"n": rows},
        )


def plain_select(url: str, batch_size: int) -> int:
    """The floor: the same window streamed with a server-side cursor, rows discarded."""
    engine = sa.create_engine(url)
    query = replica_select("interactions", START - OVERLAP, END)
    n = 0
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(query)
        for batch in result.partitions(batch_size):
            n += len(batch)
    engine.dispose()
    return n


def raw_cursor_select(batch_size: int) -> int:
    """The same rows through a bare MySQLdb server-side cursor (no SQLAlchemy rows)."""
    import MySQLdb
    from MySQLdb.cursors import SSCursor

    url = sa.make_url(ROOT_URL)
    conn = MySQLdb.connect(
        host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
        password=url.password or "", database=REPLICA_DB, charset="utf8mb4",
    )  # fmt: skip
    engine = sa.create_engine(f"{ROOT_URL}/{REPLICA_DB}")
    compiled = replica_select("interactions", START - OVERLAP, END).compile(dialect=engine.dialect)
    params = [compiled.params[k] for k in compiled.positiontup or ()]
    cursor = conn.cursor(SSCursor)
    cursor.execute(str(compiled), params)
    n = 0
    while rows := cursor.fetchmany(batch_size):
        n += len(rows)
    conn.close()
    engine.dispose()
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    admin = sa.create_engine(ROOT_URL + "/")
    began = time.perf_counter()
    seed(admin, args.rows)
    print(f"seeded {args.rows} interactions in {time.perf_counter() - began:.1f}s", flush=True)
    replica_url = f"{ROOT_URL}/{REPLICA_DB}?charset=utf8mb4"
    settings = load_settings().replace(
        replica_url=replica_url, recsys_db_url=f"{ROOT_URL}/{RECSYS_DB}?charset=utf8mb4"
    )
    recsys = get_engine(settings.recsys_db_url)
    schema.ensure_recsys_schema(recsys)
    with_infile = settings.replace(recsys_db_url=settings.recsys_db_url + "&local_infile=1")
    paths = {  # name -> (settings, server_side_copy, expected copy method)
        "ours": (settings, None, "insert_select"),
        "load_data": (with_infile, False, "load_data"),
        "insert": (settings, False, "insert"),
    }
    times: dict[str, list[float]] = {name: [] for name in [*paths, "plain", "raw_cursor"]}
    for repeat in range(args.repeats):
        began = time.perf_counter()
        n_plain = plain_select(replica_url, args.batch_size)
        times["plain"].append(time.perf_counter() - began)
        began = time.perf_counter()
        if raw_cursor_select(args.batch_size) != n_plain:
            raise SystemExit("raw cursor SELECT read another number of rows")
        times["raw_cursor"].append(time.perf_counter() - began)
        for name, (run_settings, mode, method) in paths.items():
            got = copy_method(
                sa.make_url(run_settings.replica_url), sa.make_url(run_settings.recsys_db_url), mode
            )
            if got != method:
                raise SystemExit(f"{name}: copy method {got}, expected {method}")
            # each timed run starts from an empty staging table (a first run of the interval,
            # not a re-run that must first delete the previous run's million rows)
            with recsys.begin() as conn:
                conn.execute(sa.text("TRUNCATE TABLE staging_interactions"))
            began = time.perf_counter()
            result = extract_interval(
                run_settings, START, END, run_id=f"bench{repeat}", batch_size=args.batch_size,
                overlap=OVERLAP, tables=("interactions",), server_side_copy=mode,
            )  # fmt: skip
            times[name].append(time.perf_counter() - began)
            n_ours = result.rows["interactions"]
            if n_ours != n_plain:
                raise SystemExit(f"row counts differ: {name} {n_ours} vs plain SELECT {n_plain}")
        print(
            f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            + f" ({n_plain} rows)",
            flush=True,
        )  # fmt: skip
    with admin.begin() as conn:
        for db in (REPLICA_DB, RECSYS_DB):
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db}`"))
    rps = {name: n_plain / min(t) for name, t in times.items()}  # best of the repeats
    median_rps = {name: n_plain / statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "bench": "extract",
        "ratio": round(rps["ours"] / rps["plain"], 3),
        "target": 0.8,
        "rows": n_plain,
        "ours_rows_per_s": round(rps["ours"]),
        "plain_select_rows_per_s": round(rps["plain"]),
        "load_data_rows_per_s": round(rps["load_data"]),
        "load_data_ratio": round(rps["load_data"] / rps["plain"], 3),
        "insert_path_rows_per_s": round(rps["insert"]),
        "insert_path_ratio": round(rps["insert"] / rps["plain"], 3),
        "ratio_of_medians": round(median_rps["ours"] / median_rps["plain"], 3),
        "load_data_ratio_of_medians": round(median_rps["load_data"] / median_rps["plain"], 3),
        "raw_cursor_select_rows_per_s": round(rps["raw_cursor"]),
        "ratio_vs_raw_cursor": round(rps["ours"] / rps["raw_cursor"], 3),
        "load_data_ratio_vs_raw_cursor": round(rps["load_data"] / rps["raw_cursor"], 3),
        "seconds": {name: [round(x, 2) for x in t] for name, t in times.items()},
        "note": "ours = extract_interval's default on one server (INSERT ... SELECT); "
        "load_data / insert = the cross-server paths (rows through Python)",
        "batch_size": args.batch_size,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
