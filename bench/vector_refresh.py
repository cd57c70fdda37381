"""Bench: vectors/s of the refresh's Milvus write path vs a raw ``MilvusClient.insert``.

Same run, same Milvus Lite file, same float32 array (fixed seed). Ours is
``tasks.serving.vectors.insert_vectors`` (numpy -> rows, batched inserts with progress logging) plus
the flush; the floor is one raw ``client.insert`` of all rows built from the same array
(as Python lists, pymilvus' fastest row form) plus the flush. Each side runs ``--repeats``
times into fresh collections, alternating which goes first, and the best time counts
(shared 2-core machines are noisy; medians are reported beside it). Milvus Lite 3 serves
from threads inside this process, so both sides share the same GIL-bound server.
Last stdout line: one JSON object.

    .venv/bin/python bench/vector_refresh.py [--vectors 100000] [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def _new_collection(client, name: str, dim: int) -> None:  # type: ignore[no-untyped-def]
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("illust_id", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("artist_id", DataType.INT64)
    client.create_collection(name, schema=schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pymilvus import MilvusClient

    from tasks.serving.vectors import insert_vectors

    rng = np.random.default_rng(args.seed)
    ids = np.arange(1, args.vectors + 1, dtype=np.int64)
    vectors = rng.normal(size=(args.vectors, args.dim)).astype(np.float32)
    artists = rng.integers(1, 1000, size=args.vectors, dtype=np.int64)

    with tempfile.TemporaryDirectory() as tmp:
        client = MilvusClient(str(Path(tmp) / "bench.db"))
        ours_s: list[float] = []
        raw_s: list[float] = []

        def run_ours(name: str) -> float:
            start = time.perf_counter()
            n = insert_vectors(
                client, name, ids, vectors, artist_ids=artists, batch_size=args.batch_size
            )
            client.flush(name)
            elapsed = time.perf_counter() - start
            assert n == args.vectors
            return elapsed

        def run_raw(name: str) -> float:
            start = time.perf_counter()
            rows = [
                {"illust_id": i, "embedding": v, "artist_id": a}
                for i, v, a in zip(ids.tolist(), vectors.tolist(), artists.tolist(), strict=True)
            ]
            client.insert(name, rows)
            client.flush(name)
            return time.perf_counter() - start

        for rep in range(args.repeats):
            # Alternate which side goes first so drift in machine load hits both.
            order = [("ours", run_ours, ours_s), ("raw", run_raw, raw_s)]
            for label, runner, times in order if rep % 2 == 0 else order[::-1]:
                name = f"{label}_{rep}"
                _new_collection(client, name, args.dim)
                times.append(runner(name))
                assert client.get_collection_stats(name)["row_count"] == args.vectors
                client.drop_collection(name)
            print(f"repeat {rep}: ours {ours_s[-1]:.2f}s raw {raw_s[-1]:.2f}s", flush=True)
        client.close()

    ours_rate = args.vectors / min(ours_s)
    raw_rate = args.vectors / min(raw_s)
    print(
        json.dumps(
            {
                "bench": "vector_refresh",
                "ratio": round(ours_rate / raw_rate, 3),
                "target": 0.9,
                "vectors": args.vectors,
                "dim": args.dim,
                "ours_vectors_per_s": round(ours_rate, 1),
                "raw_insert_vectors_per_s": round(raw_rate, 1),
                "ratio_of_medians": round(float(np.median(raw_s) / np.median(ours_s)), 3),
                "ours_seconds": [round(s, 3) for s in ours_s],
                "raw_seconds": [round(s, 3) for s in raw_s],
                "batch_size": args.batch_size,
                "backend": "milvus-lite",
            }
        )
    )


if __name__ == "__main__":
    main()
