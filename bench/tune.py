"""Grid search of the two-tower's knobs on a validation split cut from train (issue 11, item 4).

Usage: ``python bench/tune.py [--data PATH] [--format ml-100k|movielens-csv|demo]
[--grid FIELD=v1,v2 ...] [--epochs N] [--set FIELD=VALUE ...] [--home DIR]``

The data set is cut by bench/quality.py's temporal leave-last-positive split; only its train
part (each test user's last positive and everything after it removed) is written to a
throw-away recsys DB's mirror, with bench/quality.py's own helpers. The search
(``tasks.model.training.tune.tune_two_tower``) trains every grid point with the pipeline's
``train_two_tower`` over that mirror and selects on the stage's own holdout: the leave-last cut
*of the train part*. The test users' held-out items are never written, read or scored here;
check a choice afterwards with ``bench/quality.py --set FIELD=VALUE``. The base is
``TRAIN_DEFAULTS`` (``--epochs`` / ``--set`` change it); without ``--grid`` the grid is
``DEFAULT_GRID``, two values of three knobs around the defaults, the default first (a tie
keeps it). MLflow tracks into the home (``--home`` keeps it: ``mlflow ui --backend-store-uri
sqlite:///HOME/mlflow.db``). The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality import (  # noqa: E402
    OVERRIDES,
    interval_of,
    read_frames,
    train_params,
    train_part_popularity,
    write_mirror,
)
from tasks.model.evaluate import LeaveLastSplit, leave_last_positive_split  # noqa: E402
from tasks.model.training.config import TRAIN_DEFAULTS  # noqa: E402
from tasks.model.training.tune import SELECTION_METRIC, TuneResult, parse_grid  # noqa: E402

SELECTION = f"validation {SELECTION_METRIC} on the train-cut split (test users never seen)"
DEFAULT_GRID = {
    "dim": [TRAIN_DEFAULTS.dim, 2 * TRAIN_DEFAULTS.dim],
    "dropout": [TRAIN_DEFAULTS.dropout, 0.1],
    "logq_weight": [TRAIN_DEFAULTS.logq_weight, 0.5],
}


def prepare_home(split: LeaveLastSplit, illusts: Any, home: Path) -> tuple[Any, Any, Any]:
    """Settings of a throw-away home whose mirror and ``samples`` hold the split's train part
    only, and the interval covering it: what the search trains and validates on."""
    from tasks.core.db import get_engine
    from tasks.core.settings import load_settings
    from tasks.data.sampling import build_samples

    settings = load_settings(home).replace(
        recsys_db_url=f"sqlite:///{home / 'recsys.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        mlflow_artifact_root=(home / "mlartifacts").as_uri(),
    )
    write_mirror(get_engine(settings.recsys_db_url), illusts, split)
    start, end = interval_of(split.train)
    build_samples(settings, start, end)
    return settings, start, end


def summary(result: TuneResult) -> dict[str, Any]:
    """The JSON fields describing the search: trials (grid order), best, defaults' rank."""
    table = result.table().drop(columns=["seconds"])
    trials = json.loads(table.to_json(orient="records", double_precision=4))
    best = result.trials[result.best_index]
    out: dict[str, Any] = {
        "selection": SELECTION,
        "trials": trials,
        "best": {"trial": best.index, **best.values, **best.metrics, "run_id": best.run_id},
        "defaults_rank": result.base_rank,
        "parent_run_id": result.parent_run_id,
    }
    if result.base_rank is not None:
        base = result.trials[result.ranking[result.base_rank - 1]]
        metric = result.selection_metric
        out["best_minus_defaults"] = round(best.metrics[metric] - base.metrics[metric], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    from tasks.model.training.tune import tune_two_tower

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--format", default="ml-100k", choices=["ml-100k", "movielens-csv", "demo"])
    parser.add_argument(
        "--grid",
        action="append",
        metavar="FIELD=v1,v2",
        help=f"a TrainParams field and its values (default {DEFAULT_GRID})",
    )
    for flag in OVERRIDES:  # bench/quality.py's base overrides, same names
        kind = float if flag == "lr" else int
        parser.add_argument(f"--{flag.replace('_', '-')}", type=kind, help="base override")
    parser.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="base override of any field"
    )
    parser.add_argument("--home", help="keep the tuning home (and its MLflow) here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )

    started = time.perf_counter()
    base = train_params(args)
    grid = parse_grid(args.grid, base) if args.grid else DEFAULT_GRID
    frames = read_frames(args.data, args.format)
    split = leave_last_positive_split(frames.interactions, item_ids=frames.illusts["illust_id"])
    illusts = train_part_popularity(frames.illusts, split)
    with tempfile.TemporaryDirectory(prefix="tune-home-") as tmp:
        home = Path(args.home) if args.home else Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        settings, start, end = prepare_home(split, illusts, home)
        result = tune_two_tower(settings, start, end, base, grid)
    out = {
        "bench": "tune",
        **summary(result),
        "grid": grid,
        "base": base.as_mlflow_params(),
        "data": args.data if args.format != "demo" else "demo",
        "format": args.format,
        "interval": [start.isoformat(), end.isoformat()],
        "n_train_interactions": len(split.train),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
