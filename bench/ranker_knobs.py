"""Compare ranker settings on validation cut from train: the stage's sets and the gate's holdout.

Usage: ``python bench/ranker_knobs.py --home HOME [--seeds 1,2,3] [--set NAME=JSON ...]``

``HOME`` is a RECSYS_HOME kept by ``bench/pipeline_quality.py --keep --home HOME`` (its mirror
holds only the bench's train part; its two-tower export is the run's). The candidate sets are
built once, as ``train_ranker`` and the gate build them (``tasks.model.ranker.candidates``,
``tasks.serving.recall``'s channels, the two-tower's ANN); each setting (``RankerParams``
fields as JSON, e.g. ``--set 'no_ids={"id_features": false}'``; ``base`` = the defaults is
always run) is then fitted with the stage's own ``_fit`` once per seed and scored with
NDCG@10 on (a) the stage's validation sets (a seeded share of users) and (b) the gate's
holdout sets (each user's last positive of the train part: neither model trains on it). The
bench's test users never reach this script. Candidate-set knobs (``candidate_*``,
``append_missed``, ``history_len``) rebuild the sets for that setting.

Prints one JSON line per fit, then one summary line (means per setting) last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SET_KNOBS = (
    "candidate_tiers", "candidate_pool", "candidate_negatives", "append_missed",
    "history_len", "tag_history_len",
)  # fmt: skip


def _two_tower_export(home: Path) -> tuple[Path, datetime]:
    """The home's two-tower export and its interval end (from ``{end}-{run_id}``)."""
    exports = sorted(
        p
        for p in (home / "artifacts" / "exports").iterdir()
        if p.is_dir() and not p.name.startswith("ranker") and not p.name.endswith(".tmp")
    )
    if not exports:
        raise SystemExit(f"no two-tower export under {home}/artifacts/exports")
    return exports[-1], datetime.strptime(exports[-1].name.split("-")[0], "%Y%m%dT%H%M%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True, help="a kept pipeline_quality RECSYS_HOME")
    parser.add_argument("--seeds", default="1,2,3", help="model seeds, comma-separated")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], help="NAME=JSON of RankerParams"
    )
    args = parser.parse_args(argv)
    home = Path(args.home)
    if not (home / "recsys.db").exists() and not (home / "artifacts").exists():
        raise SystemExit(f"{home} is not a kept pipeline_quality home")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    trials: dict[str, dict[str, Any]] = {"base": {}}
    for item in args.settings:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants NAME=JSON, got {item!r}")
        trials[name] = json.loads(text)

    from pipeline_quality import _environment

    _environment(home, home / "airflow")
    out = run(home, trials, seeds)
    print(json.dumps(out))
    return 0


def run(home: Path, trials: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Fit every trial per seed; per-fit lines on stdout, the summary returned."""
    import tasks.serving.recall as channels
    from model_registry.ranker_gate import build_candidate_sets
    from tasks.core.db import get_engine
    from tasks.core.settings import load_settings
    from tasks.model.features import fit_feature_stats
    from tasks.model.ranker import stage
    from tasks.model.ranker.candidates import export_ann, list_ndcg, training_sets
    from tasks.model.ranker.config import RankerParams
    from tasks.model.ranker.features import RankingFeatureBuilder
    from tasks.model.ranker.model import predict, ranker_feature_config
    from tasks.model.ranker.rows import read_ranking_frames

    began = time.perf_counter()
    settings = load_settings()
    export, end = _two_tower_export(home)
    frames = read_ranking_frames(get_engine(settings.recsys_db_url), end)
    base = RankerParams()
    builders: dict[tuple[int, int], Any] = {}

    def builder_for(p: RankerParams) -> Any:
        key = (p.history_len, p.tag_history_len)
        if key not in builders:
            builders[key] = RankingFeatureBuilder(
                frames.interactions, frames.illusts, frames.follows,
                history_len=p.history_len, tag_history_len=p.tag_history_len,
            )  # fmt: skip
        return builders[key]

    ann = export_ann(export, builder_for(base).catalogue)
    holdout = build_candidate_sets(
        frames.interactions, frames.illusts, frames.follows, channels,
        interval_end=end, ann=ann, history_len=base.history_len,
    )  # fmt: skip
    cached_sets: dict[tuple[Any, ...], Any] = {}
    fits: list[dict[str, Any]] = []
    for name, knobs in trials.items():
        for seed in seeds:
            params = dataclasses.replace(base, **knobs, seed=seed)
            key = tuple(getattr(params, k) for k in SET_KNOBS)
            builder = builder_for(params)
            if key not in cached_sets:
                cached_sets[key] = training_sets(
                    frames.interactions, frames.illusts, frames.follows, channels, ann=ann,
                    tiers=params.candidate_tiers, pool=params.candidate_pool,
                    negatives=params.candidate_negatives, history_len=params.history_len,
                    tag_history_len=params.tag_history_len, seed=base.seed,
                    append_missed=params.append_missed,
                )  # fmt: skip
            config = ranker_feature_config(params)
            stats = fit_feature_stats(config, builder.catalogue.features)
            data = stage._candidate_data(cached_sets[key], None, builder, params)
            t = time.perf_counter()
            fit = stage._fit(params, config, stats, data, "no")
            row = {
                "trial": name,
                "seed": seed,
                "validation_NDCG@10": round(fit.score, 4),
                "validation_recall_order_NDCG@10": round(
                    list_ndcg(data.val_sets, data.val_sets.recall_order_scores()), 4
                ),
                "holdout_NDCG@10": round(
                    list_ndcg(holdout, predict(fit.model, holdout.features)), 4
                ),
                "epochs": len(fit.history.history["loss"]),
                "seconds": round(time.perf_counter() - t, 1),
            }
            fits.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        name: {
            metric: round(float(np.mean([f[metric] for f in fits if f["trial"] == name])), 4)
            for metric in ("validation_NDCG@10", "holdout_NDCG@10")
        }
        for name in trials
    }
    return {
        "bench": "ranker_knobs",
        "home": str(home),
        "interval_end": end.isoformat(),
        "seeds": seeds,
        "holdout_sets": int(holdout.n_sets),
        "holdout_recalled": int(holdout.recalled),
        "holdout_recall_order_NDCG@10": round(list_ndcg(holdout, holdout.recall_order_scores()), 4),
        "trials": summary,
        "trial_knobs": trials,
        "seconds": round(time.perf_counter() - began, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
