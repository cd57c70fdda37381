"""Smoke test of bench/pipeline_quality.py on a tiny generated MovieLens CSV set (1997-1998):
load -> real DAGs -> scores; the last line is the JSON of EVALUATION.md with finite numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = (
    "MostPop", "ItemKNN", "EASE", "two_tower", "served", "served_no_ranker", "served_precomputed",
)  # fmt: skip
METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def write_tiny_movielens_csv(folder: Path, *, users: int = 40, items: int = 60) -> Path:
    """``ratings.csv`` + ``movies.csv``: each user rates 14 movies from a 2-genre taste, one
    rating a day from 1997-10-01 + user offset (day-granular timestamps), seeded."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    with (folder / "movies.csv").open("w") as out:
        out.write("movieId,title,genres\n")
        for i in range(1, items + 1):
            out.write(f"{i},Movie {i} ({1980 + i % 15}),{genres[i % 4]}|{genres[(i + 1) % 4]}\n")
    day0 = 875_664_000  # 1997-10-01 00:00 UTC
    with (folder / "ratings.csv").open("w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        for u in range(1, users + 1):
            liked = [i for i in range(1, items + 1) if i % 4 in (u % 4, (u + 1) % 4)]
            picks = rng.choice(liked, size=14, replace=False)
            for day, movie in enumerate(picks):
                rating = 5 if rng.random() < 0.7 else 2
                out.write(f"{u},{movie},{rating},{day0 + (u + day) * 86_400}\n")
    return folder


def test_bench_json_shape_and_finite_numbers(tmp_path: Path) -> None:
    data = write_tiny_movielens_csv(tmp_path / "ml")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline_quality.py"), "--data", str(data),
         "--format", "movielens-csv", "--home", str(tmp_path / "home"),
         # the suite's Airflow metadata DB (migrated by `make test`): no second migration
         "--airflow-home", os.environ["AIRFLOW_HOME"],
         "--epochs", "2"],  # the shape, not the quality: keeps the test well under 90 s
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["bench"] == "pipeline_quality" and result["target"] == 1.0
    assert result["train_params"] == {"epochs": 2}
    # one interval over the whole span: first rating 1997-10-02 (user 1, day 0) to the last,
    # 1997-11-22 (user 40, day 13: 40 + 13 = 53 days after 1997-10-01) -> the day after
    assert result["interval"] == ["1997-10-02T00:00:00+00:00", "1997-11-23T00:00:00+00:00"]
    assert result["users"] == 40 and result["items"] == 60
    # every user has >= 2 positives with overwhelming probability (14 ratings at p=0.7)
    assert 35 <= result["test_users"] <= 40
    for name in MODELS:
        metrics = result["models"][name]
        for key in METRICS:
            assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["HR@10"] <= metrics["HR@20"]
        assert metrics["NDCG@10"] <= metrics["HR@10"] and metrics["NDCG@10"] <= metrics["NDCG@20"]
    best = max(result["models"][n]["HR@10"] for n in ("MostPop", "ItemKNN", "EASE"))
    if best > 0:
        assert result["ratio"] == round(result["models"]["served"]["HR@10"] / best, 4)
    # with the ranker (when a champion is deployed) vs today's round-robin order
    if result["ranker_version"] is None:
        assert result["models"]["served_no_ranker"] == result["models"]["served"]
        assert result["ranker_note"].startswith("no ranker champion deployed")
        assert result["ranker_vs_round_robin"] is None
    else:
        paired = result["ranker_vs_round_robin"]
        for key in ("HR@10", "NDCG@10"):
            gap = result["models"]["served"][key] - result["models"]["served_no_ranker"][key]
            assert paired[key]["diff"] == pytest.approx(gap)
            low, high = paired[key]["ci95"]
            assert -1.0 <= low <= high <= 1.0
        note = result["ranker_note"]
        assert note.startswith(f"served ranked by ranker v{result['ranker_version']}"), note
        realtime = result["served_sources"]["realtime"]
        # every list the realtime path answered (not the hot fallback) was ranked
        assert realtime["ranked"] == realtime.get("realtime", 0), realtime
    assert result["two_tower_alias"] in ("champion", "challenger")
    assert result["seconds"] > 0 and result["peak_rss_mb"] > 0

    # bench/ranker_knobs.py on the home the run kept: the stage's sets and the gate's holdout
    knobs = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ranker_knobs.py"), "--home", str(tmp_path / "home"),
         "--seeds", "1", "--set", 'appended={"append_missed": true}'],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert knobs.returncode == 0, knobs.stdout[-3000:] + knobs.stderr[-3000:]
    lines = [json.loads(line) for line in knobs.stdout.strip().splitlines() if line.startswith("{")]
    fits, summary = lines[:-1], lines[-1]
    assert summary["bench"] == "ranker_knobs" and summary["seeds"] == [1]
    assert summary["interval_end"] == "1997-11-23T00:00:00"
    assert set(summary["trials"]) == {"base", "appended"} and len(fits) == 2
    assert 0 < summary["holdout_recalled"] <= summary["holdout_sets"] <= result["test_users"]
    for fit in fits:
        name = fit["trial"]
        for key in ("validation_NDCG@10", "holdout_NDCG@10"):
            assert 0.0 <= fit[key] <= 1.0 and summary["trials"][name][key] == fit[key]
