"""Training throughput: the pipeline's streaming input vs an in-memory tf.data pipeline.

Both train the same two-tower model (same config, same seed, point-wise loss) on the same
rows, alternately (pipeline, in-memory, pipeline, in-memory: 3 epochs a fit); the medians of
the examples/s of every epoch but each fit's first (tracing) are compared.
* pipeline: the ``samples`` table in an SQLite recsys DB, streamed in chunks by
  ``tasks.model.training.examples.SampleStream`` (history cut per example, item features gathered; the first
  pass writes featurized chunks to a local .npz cache that later epochs read in random
  order) -> ``tf.data.Dataset.from_generator``; ``first_pass_rows_per_s`` reports the
  database pass alone;
* in memory: the very same featurized rows materialised first -> ``from_tensor_slices``.
ratio = pipeline / in-memory examples/s, target 0.8. Last stdout line: the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 7
END = datetime(2024, 3, 1)


def seed_database(url: str, *, n_users: int, n_items: int, n_samples: int) -> None:
    """A synthetic recsys DB: mirror illusts/interactions and a samples table (1:3 pos:neg)."""
    import pandas as pd
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.schema import ensure_recsys_schema, mirror_illusts, mirror_interactions, samples

    rng = np.random.default_rng(SEED)
    engine = get_engine(url)
    ensure_recsys_schema(engine)
    tags = np.array(["cat", "dog", "sky", "sea", "girl", "mecha", "food", "city"])
    illusts = pd.DataFrame(
        {
            "illust_id": np.arange(1, n_items + 1),
            "artist_id": rng.integers(1, n_items // 5, n_items),
            "tags": ["|".join(rng.choice(tags, 3, replace=False)) for _ in range(n_items)],
            "width": rng.integers(400, 3000, n_items),
            "height": rng.integers(400, 3000, n_items),
            "sanity_level": rng.choice([2, 4, 6], n_items),
            "restrict": 0,
            "x_restrict": rng.integers(0, 2, n_items),
            "total_bookmarks": rng.integers(0, 10000, n_items),
            "total_view": rng.integers(0, 100000, n_items),
            "create_time": END - timedelta(days=60),
            "update_time": END - timedelta(days=60),
        }
    )
    pairs = np.unique(
        np.stack(
            [rng.integers(1, n_users + 1, n_samples), rng.integers(1, n_items + 1, n_samples)], 1
        ),
        axis=0,
    )
    labels = (rng.random(len(pairs)) < 0.25).astype(int)
    times = END - pd.to_timedelta(rng.integers(60, 59 * 86400, len(pairs)), unit="s")
    positives = pd.DataFrame(
        {"user_id": pairs[:, 0], "illust_id": pairs[:, 1], "label": labels, "create_time": times}
    )
    positives = positives[positives["label"] == 1]
    frame = pd.DataFrame(
        {
            "user_id": pairs[:, 0],
            "illust_id": pairs[:, 1],
            "label": labels,
            "source": np.where(labels == 1, "positive", "random"),
            "interval_start": END - timedelta(days=60),
            "interval_end": END,
            "created_at": END,
        }
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(mirror_illusts), illusts.to_dict("records"))
        conn.execute(sa.insert(mirror_interactions), positives.to_dict("records"))
        conn.execute(sa.insert(samples), frame.to_dict("records"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import keras
    import tensorflow as tf

    from tasks.core.db import get_engine
    from tasks.model.features import BookmarkHistory, default_feature_config, fit_feature_stats
    from tasks.model.training.config import TrainParams
    from tasks.model.training.dataset import dataset_from_batches
    from tasks.model.training.examples import SampleStream, read_training_inputs
    from tasks.model.training.loop import fit_model
    from tasks.model.two_tower import ModelParams, build_two_tower

    params = TrainParams(
        loss="pointwise", epochs=3, batch_size=args.batch_size, dim=32, hidden=64, patience=10,
        seed=SEED, chunk_rows=8192, val_share=0.01,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/recsys.db"
        seed_database(url, n_users=args.users, n_items=args.items, n_samples=args.samples)
        engine = get_engine(url)
        catalogue, interactions, counts = read_training_inputs(engine, END)
        stream = SampleStream(
            engine=engine,
            interval_end=END,
            catalogue=catalogue,
            history=BookmarkHistory.from_frame(interactions[interactions["label"] == 1]),
            params=params,
            cache_dir=Path(tmp) / "samples-cache",
        )
        config = default_feature_config(embedding_dim=params.dim, hash_bins=params.hash_bins)
        stats = fit_feature_stats(config, catalogue.features)

        def fresh_model():  # type: ignore[no-untyped-def]
            keras.utils.set_random_seed(SEED)
            return build_two_tower(config, stats, ModelParams(dim=params.dim, hidden=params.hidden))

        # The in-memory copy holds the very rows the pipeline trains on (this pass also
        # writes the pipeline's local chunk cache, as train_two_tower's first epoch does).
        started = time.perf_counter()
        rows = list(stream.batches("train", 0))
        first_pass_rows_per_s = sum(len(b["label"]) for b in rows) / (time.perf_counter() - started)
        memory = {k: np.concatenate([b[k] for b in rows]) for k in rows[0]}

        def pipeline(epoch: int):  # type: ignore[no-untyped-def]
            return dataset_from_batches(lambda: stream.batches("train", epoch))

        def in_memory(epoch: int):  # type: ignore[no-untyped-def]
            # The strongest plain in-memory recipe: permute once per epoch in numpy, then
            # batch (an element-wise shuffle buffer would only make this baseline slower).
            order = np.random.default_rng([SEED, epoch]).permutation(len(memory["label"]))
            return (
                tf.data.Dataset.from_tensor_slices({k: v[order] for k, v in memory.items()})
                .batch(params.batch_size)
                .prefetch(tf.data.AUTOTUNE)
            )

        # Alternate the two, ``rounds`` times each, so machine load drifting (other jobs on
        # the shared cores) hits both alike; the first epoch of every fit pays for tracing
        # and is left out of the medians.
        by_epoch: dict[str, list[float]] = {"pipeline": [], "in_memory": []}
        n_train = 0
        for _ in range(args.rounds):
            for name, data in (("pipeline", pipeline), ("in_memory", in_memory)):
                fit = fit_model(fresh_model(), data, None, params)
                by_epoch[name] += fit.examples_per_s[1:]
                n_train = fit.n_train
    pipeline_eps = float(np.median(by_epoch["pipeline"]))
    memory_eps = float(np.median(by_epoch["in_memory"]))
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "ratio": round(pipeline_eps / memory_eps, 4),
                "target": 0.8,
                "pipeline_examples_per_s": round(pipeline_eps, 1),
                "in_memory_examples_per_s": round(memory_eps, 1),
                "examples_per_epoch": int(n_train),
                "first_pass_rows_per_s": round(first_pass_rows_per_s, 1),
                "samples": counts,
                "batch_size": params.batch_size,
                "epochs_per_fit": params.epochs,
                "rounds": args.rounds,
                "pipeline_examples_per_s_by_epoch": [round(v, 1) for v in by_epoch["pipeline"]],
                "in_memory_examples_per_s_by_epoch": [round(v, 1) for v in by_epoch["in_memory"]],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
