"""Benchmark: ``extract_interval`` (replica -> staging) vs a plain streaming SELECT of the
same rows, on MariaDB, in the same run.

Replica and recsys DB live on one server here, so ``extract_interval``'s default is the
server-side ``INSERT ... SELECT`` copy (``ratio``); the path used when the replica is another
server (server-side cursor + writer thread) is measured too (``streamed_path_ratio``).

The replica (database ``bench_extract_replica``) is seeded with ``--rows`` interactions in one
day by ``INSERT ... SELECT`` from MariaDB's sequence engine (fixed formula, so every run
sees the same data); the recsys DB is ``bench_extract_recsys``. Both databases are dropped
at the end. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from tasks import schema
from tasks.db import get_engine
from tasks.extract import extract_interval, replica_select
from tasks.settings import load_settings

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
    schema.create_recsys_schema(recsys)
    ours, streamed, floor = [], [], []
    for repeat in range(args.repeats):
        began = time.perf_counter()
        n_plain = plain_select(replica_url, args.batch_size)
        floor.append(time.perf_counter() - began)
        for mode, times in ((None, ours), (False, streamed)):
            # each timed run starts from an empty staging table (a first run of the interval,
            # not a re-run that must first delete the previous run's million rows)
            with recsys.begin() as conn:
                conn.execute(sa.text("TRUNCATE TABLE staging_interactions"))
            began = time.perf_counter()
            result = extract_interval(
                settings, START, END, run_id=f"bench{repeat}", batch_size=args.batch_size,
                overlap=OVERLAP, tables=("interactions",), server_side_copy=mode,
            )  # fmt: skip
            times.append(time.perf_counter() - began)
            n_ours = result.rows["interactions"]
            if n_ours != n_plain:
                raise SystemExit(f"row counts differ: extract {n_ours} vs plain SELECT {n_plain}")
        print(
            f"repeat {repeat}: plain {floor[-1]:.2f}s, extract (default: server-side copy) "
            f"{ours[-1]:.2f}s, extract (streamed through Python) {streamed[-1]:.2f}s, "
            f"{n_ours} rows",
            flush=True,
        )
    with admin.begin() as conn:
        for db in (REPLICA_DB, RECSYS_DB):
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db}`"))
    ours_rps, floor_rps = n_ours / min(ours), n_plain / min(floor)
    print(json.dumps({
        "bench": "extract",
        "ratio": round(ours_rps / floor_rps, 3),
        "target": 0.8,
        "rows": n_ours,
        "ours_rows_per_s": round(ours_rps),
        "plain_select_rows_per_s": round(floor_rps),
        "ours_s": [round(x, 2) for x in ours],
        "plain_select_s": [round(x, 2) for x in floor],
        "streamed_path_rows_per_s": round(n_ours / min(streamed)),
        "streamed_path_ratio": round(n_ours / min(streamed) / floor_rps, 3),
        "streamed_path_s": [round(x, 2) for x in streamed],
        "note": "ours = extract_interval's default on one server (INSERT ... SELECT); "
        "streamed_path = the cross-server path (server-side cursor + writer thread)",
        "batch_size": args.batch_size,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
