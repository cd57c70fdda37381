"""Benchmark: the samples write (INSERT IGNORE negatives, then REPLACE INTO positives) vs
``LOAD DATA LOCAL INFILE`` (its IGNORE and REPLACE forms) of the same rows, on MariaDB.

Rows come from ``tasks.data.sampling.draw_negatives`` on a synthetic catalogue (fixed seed).
Every writer starts from an empty ``samples`` table in the scratch database
``bench_sampling``, interleaved in the same run: ``write_samples``' default (the
``local_infile=1`` URL makes it use LOAD DATA IGNORE/REPLACE, writing its own TSV files),
``write_samples(method="insert")`` (multi-row INSERT IGNORE / REPLACE statements), and the
floor, raw LOAD DATA of prepared files (their writing time excluded, reported apart).

Run: ``.venv/bin/python bench/sampling.py [--positives 250000]``. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from tasks.core import schema
from tasks.data.sampling import SOURCE_LABELS, SampleRows, draw_negatives, write_samples

ROOT_URL = os.environ.get("RECSYS_TEST_MARIADB", "mysql+mysqldb://root@127.0.0.1:3306")
DB = "bench_sampling"
START, END = datetime(2024, 1, 1), datetime(2024, 1, 2)


def make_rows(n_positives: int, n_users: int, n_items: int, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    items = np.arange(1, n_items + 1, dtype=np.int64)
    popularity = rng.zipf(1.3, size=n_items).astype(np.float64)
    pos_users = rng.integers(1, n_users + 1, size=n_positives)
    pos_items = rng.integers(1, n_items + 1, size=n_positives)
    pairs = np.unique(np.stack([pos_users, pos_items], axis=1), axis=0)
    draw = draw_negatives(pairs[:, 0], items, popularity, pairs, rng=rng)
    negatives = SampleRows(
        draw.user_ids, draw.item_ids, np.where(draw.popular, "popular", "random")
    )
    positives = SampleRows(pairs[:, 0], pairs[:, 1], np.full(len(pairs), "positive"))
    return negatives, positives


def fresh_table(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS samples"))
    schema.samples.create(engine)


def write_tsv(rows: SampleRows, path: Path) -> None:
    stamp = "%Y-%m-%d %H:%M:%S"
    tail = {
        src: f"\t{label}\t{src}\t{START:{stamp}}\t{END:{stamp}}\t{END:{stamp}}\n"
        for src, label in SOURCE_LABELS.items()
    }
    with path.open("w") as fh:
        fh.writelines(
            f"{u}\t{i}{tail[src]}"
            for u, i, src in zip(
                rows.user_ids.tolist(), rows.item_ids.tolist(), rows.sources.tolist(), strict=True
            )
        )


def load_data(engine: sa.Engine, neg_path: Path, pos_path: Path) -> None:
    cols = "(user_id, illust_id, label, source, interval_start, interval_end, created_at)"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"LOAD DATA LOCAL INFILE '{neg_path}' IGNORE INTO TABLE samples {cols}"
        )
        conn.exec_driver_sql(
            f"LOAD DATA LOCAL INFILE '{pos_path}' REPLACE INTO TABLE samples {cols}"
        )


def table_checksum(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT COUNT(*) FROM samples")).scalar_one()
        pos = conn.execute(sa.text("SELECT COUNT(*) FROM samples WHERE label = 1")).scalar_one()
    return int(n), int(pos)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--positives", type=int, default=250_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    admin = sa.create_engine(ROOT_URL + "/")
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{DB}`"))
    engine = sa.create_engine(f"{ROOT_URL}/{DB}?charset=utf8mb4&local_infile=1")
    negatives, positives = make_rows(args.positives, args.users, args.items, args.seed)
    rows = len(negatives) + len(positives)
    print(f"rows: {len(negatives)} negatives + {len(positives)} positives = {rows}", flush=True)

    ours, inserts, floor = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        neg_path, pos_path = Path(tmp) / "neg.tsv", Path(tmp) / "pos.tsv"
        began = time.perf_counter()
        write_tsv(negatives, neg_path)
        write_tsv(positives, pos_path)
        tsv_s = time.perf_counter() - began
        for repeat in range(args.repeats):  # interleaved so machine noise hits all three
            checks = []
            for method, times in (("auto", ours), ("insert", inserts)):
                fresh_table(engine)
                began = time.perf_counter()
                write_samples(
                    engine, negatives, positives, interval_start=START, interval_end=END,
                    method=method,
                )  # fmt: skip
                times.append(time.perf_counter() - began)
                checks.append(table_checksum(engine))
            fresh_table(engine)
            began = time.perf_counter()
            load_data(engine, neg_path, pos_path)
            floor.append(time.perf_counter() - began)
            checks.append(table_checksum(engine))
            if len(set(checks)) != 1:
                raise SystemExit(f"tables differ (auto, insert, LOAD DATA): {checks}")
            print(
                f"repeat {repeat}: write_samples default {ours[-1]:.2f}s, INSERT statements "
                f"{inserts[-1]:.2f}s, raw LOAD DATA {floor[-1]:.2f}s, table {checks[0]}",
                flush=True,
            )
        ours_check = checks[0]
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{DB}`"))
    ours_rps, floor_rps = rows / min(ours), rows / min(floor)
    insert_rps = rows / min(inserts)
    print(json.dumps({
        "bench": "sampling",
        "ratio": round(ours_rps / floor_rps, 3),
        "target": 0.8,
        "rows": rows,
        "ours_rows_per_s": round(ours_rps),
        "load_data_rows_per_s": round(floor_rps),
        "ours_s": [round(x, 2) for x in ours],
        "load_data_s": [round(x, 2) for x in floor],
        "method": "write_samples default on a local_infile=1 URL: LOAD DATA LOCAL INFILE "
        "IGNORE (negatives) then REPLACE (positives), TSV writing included",
        "insert_statements_ratio": round(insert_rps / floor_rps, 3),
        "insert_statements_rows_per_s": round(insert_rps),
        "insert_statements_s": [round(x, 2) for x in inserts],
        "floor_tsv_write_s_excluded": round(tsv_s, 2),
        "table_rows_after": ours_check[0],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
