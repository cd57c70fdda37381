"""Quality benchmark: two-tower vs MostPop / ItemKNN / EASE^R on a leave-last-positive split.

Usage: ``python bench/quality.py [--data PATH] [--format ml-100k|movielens-csv]``.
The two-tower model is the pipeline's own code (tasks.model.features / tasks.model.two_tower / the
``fit_model`` loop of tasks.model.training.loop), trained next-item style on the split's train part: every
train bookmark is a target whose history is the user's earlier bookmarks (so no example sees
its own target or the future), loss = in-batch softmax with logQ correction. Item popularity
features (total_bookmarks / total_view) are recomputed from the train part only: the
loader's totals count the test interactions too and would leak them.
The last stdout line is the JSON of EVALUATION.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.model.evaluate import LeaveLastSplit, evaluate_baselines, leave_last_positive_split  # noqa: E402
from tasks.model.features import default_feature_config, fit_feature_stats, item_features_from_frame  # noqa: E402

SEED = 42


def next_item_examples(
    split: LeaveLastSplit, history_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_ids, target illust_ids, histories) for every train bookmark after the first.

    History = the user's previous bookmarks in the (time, item id) order, newest first.
    """
    positives = split.train[split.train["label"] == 1]
    users, targets, histories = [], [], []
    for user, group in positives.groupby("user_id", sort=True):
        items = group["illust_id"].to_numpy(np.int64)  # already in split order
        for t in range(1, len(items)):
            hist = items[max(0, t - history_len) : t][::-1]
            row = np.zeros(history_len, np.int64)
            row[: len(hist)] = hist
            users.append(user)
            targets.append(items[t])
            histories.append(row)
    return np.asarray(users, np.int64), np.asarray(targets, np.int64), np.stack(histories)


def train_part_popularity(illusts: pd.DataFrame, split: LeaveLastSplit) -> pd.DataFrame:
    """Replace total_view / total_bookmarks with counts from the train part only."""
    views = split.train.groupby("illust_id").size()
    marks = split.train[split.train["label"] == 1].groupby("illust_id").size()
    out = illusts.copy()
    out["total_view"] = out["illust_id"].map(views).fillna(0).astype(np.int64)
    out["total_bookmarks"] = out["illust_id"].map(marks).fillna(0).astype(np.int64)
    return out


def train_two_tower_on_split(
    split: LeaveLastSplit, illusts: pd.DataFrame, args: argparse.Namespace
) -> tuple[dict[str, float], dict[str, float]]:
    import keras
    import tensorflow as tf

    from tasks.model.scoring import ItemCatalogue, keras_towers, tower_scores
    from tasks.model.training.config import TrainParams
    from tasks.model.training.loop import fit_model
    from tasks.model.two_tower import ModelParams, build_two_tower

    params = TrainParams(
        loss="inbatch_softmax",
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        dim=args.dim,
        hidden=args.dim * 2,
        dropout=args.dropout,
        history_len=args.history_len,
        patience=2,
        seed=SEED,
    )
    keras.utils.set_random_seed(SEED)
    catalogue = ItemCatalogue.from_features(item_features_from_frame(illusts))
    config = default_feature_config(embedding_dim=args.dim, hash_bins=2000)
    stats = fit_feature_stats(config, catalogue.features)
    model = build_two_tower(
        config,
        stats,
        ModelParams(
            dim=args.dim, hidden=args.dim * 2, dropout=args.dropout, l2=0.0, init_scale=args.scale
        ),
    )

    users, targets, histories = next_item_examples(split, args.history_len)
    counts = pd.Series(targets).value_counts()
    logq = np.log(pd.Series(targets).map(counts).to_numpy() / len(targets)).astype(np.float32)
    examples = catalogue.gather(targets)
    examples["user_id"] = users
    examples["history"] = histories
    examples["label"] = np.ones(len(targets), np.float32)
    examples["logq"] = logq
    examples["tags"] = examples["tags"].astype(str)
    rng = np.random.default_rng(SEED)
    is_val = rng.random(len(targets)) < 0.05
    train = {k: v[~is_val] for k, v in examples.items()}
    val = {k: v[is_val] for k, v in examples.items()}

    def train_data(epoch: int):  # type: ignore[no-untyped-def]
        return (
            tf.data.Dataset.from_tensor_slices(train)
            .shuffle(len(train["label"]), seed=SEED + epoch)
            .batch(params.batch_size)
        )

    def val_data(epoch: int):  # type: ignore[no-untyped-def]
        return tf.data.Dataset.from_tensor_slices(val).batch(1024)

    started = time.perf_counter()
    fit = fit_model(model, train_data, val_data, params)
    user_fn, item_fn = keras_towers(model)
    metrics = tower_scores(split, catalogue, user_fn, item_fn, history_len=args.history_len)
    info = {
        "train_examples": int((~is_val).sum()),
        "epochs_run": len(fit.train_loss),
        "best_epoch": fit.best_epoch,
        "train_seconds": round(time.perf_counter() - started, 1),
        "val_loss": [round(v, 4) for v in fit.val_loss],
    }
    return metrics, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--format", default="ml-100k", choices=["ml-100k", "movielens-csv"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--history-len", type=int, default=50)
    parser.add_argument("--scale", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )

    from tasks.data.sources.loaders import read_dataset

    started = time.perf_counter()
    frames = read_dataset(args.data, args.format)
    split = leave_last_positive_split(frames.interactions, item_ids=frames.illusts["illust_id"])
    models = evaluate_baselines(split)
    illusts = train_part_popularity(frames.illusts, split)
    two_tower, info = train_two_tower_on_split(split, illusts, args)
    models["two_tower"] = two_tower
    ease_hr = models["EASE"]["HR@10"]
    result = {
        "bench": "quality",
        "models": {name: {k: round(v, 4) for k, v in m.items()} for name, m in models.items()},
        "ratio": round(two_tower["HR@10"] / ease_hr, 4) if ease_hr > 0 else None,
        "target": 1.0,
        "data": args.data,
        "format": args.format,
        "n_users": int(split.n_users),
        "n_items": int(split.n_items),
        "n_test_users": int(len(split.test_user_idx)),
        "two_tower_training": info,
        "params": {k: v for k, v in vars(args).items() if k not in ("data", "format")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
