"""Quality through the product: load -> real DAGs -> registered champion and the API's lists.

Usage: ``python bench/pipeline_quality.py [--data PATH] [--format ml-100k|movielens-csv|demo]
[--home DIR] [--keep] [--airflow-home DIR] [--epochs N]`` (default: ../shared/data/ml-100k).

1. Cut the temporal leave-last-positive split of ../shared/EVALUATION.md from the data set.
2. Write the data set's train part (every interaction strictly before each test user's last
   positive; later ones dropped) in the same layout to a temporary folder, and load it into
   a fresh RECSYS_HOME's replica with ``recsys-data load``: the held-out positives never
   reach the replica, so no DAG, feature or model can see them. (``tags.csv`` is not copied:
   its user tags carry their own timestamps.) ``--format demo``: ``make demo``'s synthetic site
   (``DEMO_CONFIG``), its train part written to the replica directly, illust totals recounted
   from it.
3. Run the real DAGs with ``tests/doubles/dagrun.run_dag`` (as scripts/demo.py does), with
   default Params, over ONE interval covering the data set's whole span (day-aligned):
   recsys_extract_validate -> recsys_train -> recsys_deploy -> (score the API: realtime)
   -> recsys_precompute -> (score the API: precomputed).
4. Score on the split: MostPop, ItemKNN, EASE (tasks.model.evaluate; ItemKNN/EASE are skipped
   above its ``max_dense_items`` cap), the registered champion two-tower (the gate's scorer;
   the challenger when the gate promoted none: ``two_tower_alias``),
   and the list the API serves (``create_app(settings)`` under FastAPI's TestClient,
   ``GET /recommend/{uid}?k=20``): ``served`` = before precompute (the realtime path, ranked
   by the deployed ranker champion when there is one: candidates from every channel -> one
   ranker call -> top-k), ``served_no_ranker`` = the same realtime path with ranking off
   (``create_app(..., ranking=False)``: today's round-robin order), ``served_precomputed`` =
   after precompute. A served list's rank of the test item is its position in the list, or a
   miss. With no ranker deployed ``served`` IS the round-robin list: ``served_no_ranker``
   repeats it and ``ranker_note`` says so.

Last stdout line: the JSON of EVALUATION.md (``bench``, ``models``, ``ratio`` = served HR@10 /
best baseline HR@10, ``target`` 1.0, ``ratio_two_tower`` = two_tower HR@10 / EASE HR@10,
``ratio_ranker`` = served HR@10 / served_no_ranker HR@10, ``ranker_version``, ``ranker_note``,
``ranker_vs_round_robin`` = served minus served_no_ranker HR@10 / NDCG@10 on the same test users
with a paired-bootstrap 95% interval, ``tasks.model.evaluate.paired_bootstrap``; null without a
ranker)
plus ``seconds``, ``peak_rss_mb`` and the stages' seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVED_K = 20
KS = (10, 20)


def _environment(home: Path, airflow_home: Path) -> None:
    """scripts/env.sh's settings for a fresh home (set before Airflow is imported)."""
    os.environ.update(
        {
            "RECSYS_HOME": str(home),
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            "PYTHONPATH": str(ROOT)
            + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
            "PATH": str(Path(sys.executable).parent) + ":" + os.environ.get("PATH", ""),
        }
    )
    # Every store on the fresh home's embedded defaults, whatever the caller's shell points at.
    for name in (
        "RECSYS_REPLICA_URL", "AIRFLOW_CONN_RECSYS_REPLICA", "RECSYS_DB_URL",
        "AIRFLOW_CONN_RECSYS_DB", "RECSYS_KV_URL", "AIRFLOW_CONN_RECSYS_KV",
        "RECSYS_MILVUS_URI", "AIRFLOW_CONN_RECSYS_MILVUS", "RECSYS_TFSERVING_URL",
        "AIRFLOW_CONN_RECSYS_TFSERVING", "MLFLOW_TRACKING_URI", "RECSYS_MLFLOW_ARTIFACT_ROOT",
        "RECSYS_SERVING_BASE_PATH",
    ):  # fmt: skip
        os.environ.pop(name, None)


def _airflow_db(home: Path, airflow_home: Path) -> None:
    """``airflow db migrate`` and the pools, as ``make demo`` does; skipped for an Airflow
    home that already has its metadata DB (``--airflow-home``: the test suite's)."""
    if (airflow_home / "airflow.db").exists():
        return
    log = home / "airflow-migrate.log"
    with log.open("w") as sink:
        subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
            check=True, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "airflow_setup.py")],
            check=True, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip


def write_train_part(src: Path, fmt: str, train: pd.DataFrame, dst: Path) -> Path:
    """The data set in its own layout with only ``train``'s interactions (label 1 -> rating
    5, label 0 -> rating 1: the loader only keeps rating >= 4 as the label)."""
    dst.mkdir(parents=True, exist_ok=True)
    base = src if src.is_dir() else src.parent
    seconds = (pd.to_datetime(train["create_time"]) - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    rating = np.where(train["label"].to_numpy() == 1, 5, 1)
    rows = pd.DataFrame(
        {
            "u": train["user_id"].to_numpy(),
            "i": train["illust_id"].to_numpy(),
            "r": rating,
            "t": seconds,
        }
    )
    if fmt == "ml-100k":
        for name in ("u.item", "u.user", "u.genre"):
            shutil.copy(base / name, dst / name)
        rows.to_csv(dst / "u.data", sep="\t", header=False, index=False)
    else:
        shutil.copy(base / "movies.csv", dst / "movies.csv")
        rows.columns = ["userId", "movieId", "rating", "timestamp"]
        rows.to_csv(dst / "ratings.csv", index=False)
    return dst


def _demo_frames() -> Any:
    """``make demo``'s synthetic site (``DEMO_CONFIG``: its sizes and seed)."""
    from tasks.data.sources.generate import DEMO_CONFIG, generate_frames

    return generate_frames(DEMO_CONFIG)


def write_demo_train_part(full: Any, train: pd.DataFrame) -> None:
    """The synthetic site to the replica with only ``train``'s interactions, its illusts'
    total_view / total_bookmarks recounted from them (the generator's totals count the
    held-out positives too)."""
    import dataclasses

    from tasks.core.settings import load_settings
    from tasks.data.sources.frames import write_business_frames

    keys = ["user_id", "illust_id", "label", "create_time"]
    kept = full.interactions.merge(train[keys].drop_duplicates(), on=keys, how="inner")
    kept = kept[list(full.interactions.columns)]
    illusts = full.illusts.copy()
    views = kept.groupby("illust_id").size()
    marks = kept[kept["label"] == 1].groupby("illust_id").size()
    illusts["total_view"] = illusts["illust_id"].map(views).fillna(0).astype(np.int64)
    illusts["total_bookmarks"] = illusts["illust_id"].map(marks).fillna(0).astype(np.int64)
    frames = dataclasses.replace(full, interactions=kept, illusts=illusts)
    write_business_frames(frames, load_settings().replica_url)


def _quiet_fds(path: Path) -> Any:
    """Send fd 1 and 2 (Airflow's and TensorFlow's chatter) to ``path``, appending."""
    from tests.doubles.dagrun import fds_to

    return fds_to(path, append=True)


def _run_dag(dag_id: str, log_path: Path, **kwargs: Any) -> Any:
    from tests.doubles.dagrun import run_dag

    with _quiet_fds(log_path):
        outcome = run_dag(dag_id, **kwargs)
    if not outcome.ok:
        raise SystemExit(f"{dag_id} failed ({outcome.failed_tasks()}); log: {log_path}")
    print(f"{dag_id}: {outcome.state}", flush=True)
    return outcome


def served_metrics(client: Any, split: Any) -> tuple[dict[str, float], dict[str, int], np.ndarray]:
    """Rank metrics of the API's ``/recommend`` lists (top ``SERVED_K``), their sources
    (plus ``ranked``: how many lists the ranker ordered) and the per-user ranks (misses 10**9)."""
    from tasks.model.evaluate import rank_metrics

    miss = 10**9
    ranks = np.full(len(split.test_user_idx), miss, dtype=np.int64)
    sources: dict[str, int] = {}
    for row, (u_idx, i_idx) in enumerate(
        zip(split.test_user_idx, split.test_item_idx, strict=True)
    ):
        uid = int(split.user_ids[u_idx])
        answer = client.get(f"/recommend/{uid}", params={"k": SERVED_K}).json()
        sources[answer.get("source", "?")] = sources.get(answer.get("source", "?"), 0) + 1
        sources["ranked"] = sources.get("ranked", 0) + bool(answer.get("ranked"))
        ids = [int(item["illust_id"]) for item in answer.get("items", [])]
        target = int(split.item_ids[i_idx])
        if target in ids:
            ranks[row] = ids.index(target)
    return rank_metrics(ranks, KS), sources, ranks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=str(ROOT.parent / "shared" / "data" / "ml-100k"),
        help="the data set's folder",
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        default="ml-100k",
        choices=("ml-100k", "movielens-csv", "demo"),
        help="demo: scripts/demo.py's synthetic site (DEMO_CONFIG; --data unused)",
    )
    parser.add_argument("--home", default=None, help="RECSYS_HOME to use (default: a new tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the tmp RECSYS_HOME")
    parser.add_argument(
        "--airflow-home",
        default=None,
        help="an already migrated AIRFLOW_HOME to reuse (default: a new one in RECSYS_HOME)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override recsys_train's epochs Param (smoke tests only; default: the DAG's)",
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    stages: dict[str, float] = {}
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="recsys-pq-"))
    home.mkdir(parents=True, exist_ok=True)
    airflow_home = Path(args.airflow_home) if args.airflow_home else home / "airflow"
    _environment(home, airflow_home)
    log_path = home / "pipeline_quality.log"
    try:
        out = _bench(args, home, airflow_home, log_path, began, stages)
        # Libraries log at exit (Milvus Lite's shutdown) to fd 1: send fds 1/2 to the log
        # first, so the JSON stays the last line of stdout.
        sys.stdout.flush()
        sys.stderr.flush()
        real_stdout = os.dup(1)
        sink = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        os.write(real_stdout, (json.dumps(out) + "\n").encode())
        os.close(real_stdout)
        return 0
    finally:
        if not args.keep and not args.home:
            shutil.rmtree(home, ignore_errors=True)


def _bench(
    args: argparse.Namespace,
    home: Path,
    airflow_home: Path,
    log_path: Path,
    began: float,
    stages: dict[str, float],
) -> dict[str, Any]:
    from tasks.data.sources.loaders import read_dataset
    from tasks.model.evaluate import (
        evaluate_baselines,
        leave_last_positive_split,
        paired_bootstrap,
    )

    t = time.perf_counter()
    full = _demo_frames() if args.fmt == "demo" else read_dataset(args.data, args.fmt)
    split = leave_last_positive_split(
        full.interactions, item_ids=full.illusts["illust_id"].to_numpy()
    )
    _airflow_db(home, airflow_home)
    if args.fmt == "demo":
        write_demo_train_part(full, split.train)
    else:
        train_dir = write_train_part(Path(args.data), args.fmt, split.train, home / "train-data")
        from tasks.data.sources.cli import main as recsys_data

        with _quiet_fds(log_path):
            status = recsys_data(["load", "--format", args.fmt, str(train_dir)])
        if status != 0:
            raise SystemExit(f"recsys-data load failed ({status}); log: {log_path}")
    stages["load"] = time.perf_counter() - t
    times = pd.to_datetime(split.train["create_time"])
    start = times.min().floor("D").to_pydatetime()
    end = (times.max().floor("D") + pd.Timedelta(days=1)).to_pydatetime()
    span = {
        "interval_start": start.isoformat() + "+00:00",
        "interval_end": end.isoformat() + "+00:00",
    }

    t = time.perf_counter()
    _run_dag("recsys_extract_validate", log_path, conf=span)
    stages["extract_validate"] = time.perf_counter() - t
    t = time.perf_counter()
    train_conf = span if args.epochs is None else span | {"epochs": args.epochs}
    _run_dag("recsys_train", log_path, conf=train_conf)
    stages["train"] = time.perf_counter() - t
    t = time.perf_counter()
    _run_dag("recsys_deploy", log_path, conf={"force": True})
    stages["deploy"] = time.perf_counter() - t

    from fastapi.testclient import TestClient

    from api.app import create_app
    from tasks.core.settings import load_settings

    settings = load_settings()
    models: dict[str, dict[str, float]] = {}
    t = time.perf_counter()
    with _quiet_fds(log_path), TestClient(create_app(settings)) as client:
        ranker_version = client.app.state.serving.ranker_version
        models["served"], sources_rt, ranks_served = served_metrics(client, split)
    stages["served"] = time.perf_counter() - t
    if ranker_version is None:
        models["served_no_ranker"] = dict(models["served"])
        ranker_note = "no ranker champion deployed: served is the round-robin list"
        ranker_vs_round_robin = None
    else:
        t = time.perf_counter()
        with _quiet_fds(log_path), TestClient(create_app(settings, ranking=False)) as client:
            models["served_no_ranker"], _, ranks_round_robin = served_metrics(client, split)
        stages["served_no_ranker"] = time.perf_counter() - t
        ranker_note = (
            f"served ranked by ranker v{ranker_version} "
            f"({sources_rt.get('ranked', 0)} of {len(split.test_user_idx)} lists ranked)"
        )
        ranker_vs_round_robin = paired_bootstrap(ranks_served, ranks_round_robin, k=10)
    t = time.perf_counter()
    _run_dag("recsys_precompute", log_path)
    stages["precompute"] = time.perf_counter() - t
    with _quiet_fds(log_path), TestClient(create_app(settings)) as client:
        models["served_precomputed"], sources_pre, _ = served_metrics(client, split)

    t = time.perf_counter()
    with _quiet_fds(log_path):
        models.update(evaluate_baselines(split, ks=KS))
        models["two_tower"], two_tower_alias = _champion_metrics(settings, split)
    stages["score"] = time.perf_counter() - t

    baselines = [models[n]["HR@10"] for n in ("MostPop", "ItemKNN", "EASE") if n in models]
    best = max(baselines)
    ease = models.get("EASE", {}).get("HR@10")
    out = {
        "bench": "pipeline_quality",
        "data": str(args.data),
        "format": args.fmt,
        "users": int(split.n_users),
        "items": int(split.n_items),
        "test_users": int(len(split.test_user_idx)),
        "interval": [span["interval_start"], span["interval_end"]],
        "train_params": "default" if args.epochs is None else {"epochs": args.epochs},
        "models": models,
        "served_sources": {"realtime": sources_rt, "precomputed": sources_pre},
        "ratio": _ratio(models["served"]["HR@10"], best),
        "target": 1.0,
        "ratio_two_tower": _ratio(models["two_tower"]["HR@10"], ease),
        "two_tower_alias": two_tower_alias,
        "ratio_ranker": _ratio(models["served"]["HR@10"], models["served_no_ranker"]["HR@10"]),
        "ranker_version": ranker_version,
        "ranker_note": ranker_note,
        "ranker_vs_round_robin": ranker_vs_round_robin,
        "seconds": round(time.perf_counter() - began, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    return out


def _champion_metrics(settings: Any, split: Any) -> tuple[dict[str, float], str]:
    """The registered two-tower champion (else, when the gate promoted none, the challenger)
    scored by the gate's own scorer on ``split``; returns (metrics, the alias scored)."""
    import sqlalchemy as sa

    from model_registry.gate import Holdout, score_saved_model
    from model_registry.registry import resolve_alias
    from tasks.core.db import get_engine
    from tasks.core.schema import mirror_illusts
    from tasks.model.features import item_features_from_frame
    from tasks.model.scoring import ItemCatalogue

    alias = "champion"
    ref = resolve_alias(settings, alias)
    if ref is None:
        alias = "challenger"
        ref = resolve_alias(settings, alias)
    if ref is None:
        raise SystemExit("no two-tower version was registered by recsys_train")
    with get_engine(settings.recsys_db_url).connect() as conn:
        illusts = pd.read_sql(sa.select(mirror_illusts), conn)
    catalogue = ItemCatalogue.from_features(item_features_from_frame(illusts))
    return score_saved_model(settings, ref, Holdout(split=split, catalogue=catalogue)), alias


def _ratio(value: float, base: float | None) -> float | None:
    if base is None or not base > 0 or not math.isfinite(value):
        return None
    return round(value / base, 4)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


if __name__ == "__main__":
    raise SystemExit(main())
