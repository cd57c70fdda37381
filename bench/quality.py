"""Quality benchmark: two-tower vs MostPop / ItemKNN / EASE^R on a leave-last-positive split.

Usage: ``python bench/quality.py [--data PATH] [--format ml-100k|movielens-csv|demo]
[--epochs N] [--dim D] [--batch-size B] [--lr LR] [--set FIELD=VALUE ...]``
(``--format demo``: ``make demo``'s synthetic site, ``DEMO_CONFIG``).

The two-tower is trained by the pipeline's own stage, ``train_two_tower``
(tasks/model/training/stage.py), with ``TRAIN_DEFAULTS`` (tasks/model/training/config.py);
a CLI flag overrides one default, nothing else differs. To feed that stage, the split's train
part (every interaction before each test user's last positive; the held-out positives never
reach it) is written to a throw-away recsys DB's mirror tables (SQLite under a temporary
home), ``samples`` is built by the pipeline's ``build_samples`` over one interval covering
the data, and MLflow tracks into the same temporary home. The exported SavedModel is then
scored on the bench's split with the gate's scorer (``tower_scores`` over its signatures).
``two_tower_training.stage_holdout_metrics`` is the stage's own score on the leave-last cut of
the train part: a validation split that never sees the test users (used to choose knobs).
Ties in any scorer's ranking are broken fairly (``ranks_of_test_items``).
The last stdout line is the JSON of EVALUATION.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.model.evaluate import LeaveLastSplit, evaluate_baselines, leave_last_positive_split  # noqa: E402
from tasks.model.training.config import TRAIN_DEFAULTS, TrainParams  # noqa: E402

# CLI flag -> TrainParams field; a flag left unset keeps the pipeline's default.
OVERRIDES = {"epochs": "epochs", "batch_size": "batch_size", "lr": "learning_rate", "dim": "dim"}


def train_params(args: argparse.Namespace) -> TrainParams:
    """``TRAIN_DEFAULTS`` with the flags the caller set."""
    changes = {
        field: getattr(args, flag)
        for flag, field in OVERRIDES.items()
        if getattr(args, flag) is not None
    }
    fields = {f.name: f for f in dataclasses.fields(TrainParams)}
    for item in args.set or []:
        name, _, text = item.partition("=")
        if name not in fields or name == "feature_config":
            raise SystemExit(f"--set {item!r}: {name!r} is not a TrainParams field")
        default = getattr(TRAIN_DEFAULTS, name)
        kind = type(default)
        changes[name] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
    return dataclasses.replace(TRAIN_DEFAULTS, **changes)


def train_part_popularity(illusts: pd.DataFrame, split: LeaveLastSplit) -> pd.DataFrame:
    """Replace total_view / total_bookmarks with counts from the train part only."""
    views = split.train.groupby("illust_id").size()
    marks = split.train[split.train["label"] == 1].groupby("illust_id").size()
    out = illusts.copy()
    out["total_view"] = out["illust_id"].map(views).fillna(0).astype(np.int64)
    out["total_bookmarks"] = out["illust_id"].map(marks).fillna(0).astype(np.int64)
    return out


def read_frames(data: str, fmt: str) -> Any:
    """A MovieLens layout from ``data``, or (``demo``) the synthetic site ``make demo`` uses."""
    if fmt != "demo":
        from tasks.data.sources.loaders import read_dataset

        return read_dataset(data, fmt)
    from tasks.data.sources.generate import DEMO_CONFIG, generate_frames

    return generate_frames(DEMO_CONFIG)


def interval_of(train: pd.DataFrame) -> tuple[datetime, datetime]:
    """One day-aligned interval covering every train interaction."""
    times = pd.to_datetime(train["create_time"])
    start = times.min().floor("D").to_pydatetime()
    end = (times.max().floor("D") + pd.Timedelta(days=1)).to_pydatetime()
    return start, end


def write_mirror(engine: Any, illusts: pd.DataFrame, split: LeaveLastSplit) -> None:
    """The split's train part into the mirror tables the training stage reads."""
    from tasks.core.schema import ensure_recsys_schema, mirror_illusts, mirror_interactions

    ensure_recsys_schema(engine)
    columns = [c.name for c in mirror_illusts.columns]
    items = illusts.loc[:, [c for c in columns if c in illusts.columns]]
    interactions = split.train.loc[:, ["user_id", "illust_id", "label", "create_time"]]
    interactions = interactions.drop_duplicates(["user_id", "illust_id", "create_time"])
    with engine.begin() as conn:
        items.to_sql(mirror_illusts.name, conn, if_exists="append", index=False, chunksize=5000)
        interactions.to_sql(
            mirror_interactions.name, conn, if_exists="append", index=False, chunksize=20_000
        )


def train_two_tower_on_split(
    split: LeaveLastSplit, illusts: pd.DataFrame, params: TrainParams, home: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """Train with the pipeline's stage on the split's train part; score its export on the split."""
    import tensorflow as tf

    from tasks.core.db import get_engine
    from tasks.core.settings import load_settings
    from tasks.data.sampling import build_samples
    from tasks.model.features import item_features_from_frame
    from tasks.model.scoring import ItemCatalogue, saved_model_towers, tower_scores
    from tasks.model.training.stage import train_two_tower

    settings = load_settings(home).replace(
        recsys_db_url=f"sqlite:///{home / 'recsys.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        mlflow_artifact_root=(home / "mlartifacts").as_uri(),
    )
    engine = get_engine(settings.recsys_db_url)
    write_mirror(engine, illusts, split)
    start, end = interval_of(split.train)
    samples = build_samples(settings, start, end)
    started = time.perf_counter()
    result = train_two_tower(settings, start, end, params=params)
    catalogue = ItemCatalogue.from_features(item_features_from_frame(illusts))
    user_fn, item_fn = saved_model_towers(tf.saved_model.load(result.export_dir))
    metrics = tower_scores(split, catalogue, user_fn, item_fn, history_len=params.history_len)
    info = {
        "stage": "tasks.model.training.stage.train_two_tower",
        "interval": [start.isoformat(), end.isoformat()],
        "samples": {"positives": samples.positives, "negatives": samples.negatives_drawn},
        "train_examples": result.n_train,
        "val_examples": result.n_val,
        "epochs_run": result.epochs_run,
        "train_seconds": round(time.perf_counter() - started, 1),
        "stage_holdout_metrics": {k: round(v, 4) for k, v in result.metrics.items()},
    }
    return metrics, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument(
        "--format",
        default="ml-100k",
        choices=["ml-100k", "movielens-csv", "demo"],
        help="demo: scripts/demo.py's synthetic site (its default sizes and seed; --data unused)",
    )
    parser.add_argument("--epochs", type=int, help=f"default {TRAIN_DEFAULTS.epochs}")
    parser.add_argument("--batch-size", type=int, help=f"default {TRAIN_DEFAULTS.batch_size}")
    parser.add_argument("--lr", type=float, help=f"default {TRAIN_DEFAULTS.learning_rate}")
    parser.add_argument("--dim", type=int, help=f"default {TRAIN_DEFAULTS.dim}")
    parser.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="any other TrainParams field"
    )
    parser.add_argument("--home", help="keep the training home here (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )

    started = time.perf_counter()
    frames = read_frames(args.data, args.format)
    split = leave_last_positive_split(frames.interactions, item_ids=frames.illusts["illust_id"])
    models = evaluate_baselines(split)
    illusts = train_part_popularity(frames.illusts, split)
    params = train_params(args)
    with tempfile.TemporaryDirectory(prefix="quality-home-") as tmp:
        home = Path(args.home) if args.home else Path(tmp)
        two_tower, info = train_two_tower_on_split(split, illusts, params, home)
    models["two_tower"] = two_tower
    ease_hr = models["EASE"]["HR@10"]
    result = {
        "bench": "quality",
        "models": {name: {k: round(v, 4) for k, v in m.items()} for name, m in models.items()},
        "ratio": round(two_tower["HR@10"] / ease_hr, 4) if ease_hr > 0 else None,
        "target": 1.0,
        "data": args.data if args.format != "demo" else "demo",
        "format": args.format,
        "n_users": int(split.n_users),
        "n_items": int(split.n_items),
        "n_test_users": int(len(split.test_user_idx)),
        "two_tower_training": info,
        "params": params.as_mlflow_params(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
