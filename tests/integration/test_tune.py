"""The two-tower grid search (tasks/model/training/tune.py) on a tiny synthetic site, for real:
bench/tune.py's own preparation (train part only), two 1-epoch trials through
``train_two_tower``, a real MLflow store."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = dict(epochs=1, batch_size=32, dim=8, hidden=8, hash_bins=64, history_len=6, chunk_rows=256)


def _bench_tune():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_tune", REPO / "bench" / "tune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_signature_takes_no_test_split() -> None:
    """Selection can only see the recsys DB's mirror: no split or held-out data goes in."""
    from tasks.model.training.tune import tune_two_tower

    assert list(inspect.signature(tune_two_tower).parameters) == [
        "settings",
        "interval_start",
        "interval_end",
        "base",
        "grid",
        "selection_metric",
        "lineage",
    ]


@pytest.mark.slow
def test_two_trial_search_logs_parent_table_and_picks_the_max(recsys_home: Path) -> None:
    import mlflow

    from tasks.core.db import get_engine
    from tasks.data.sources.generate import GeneratorConfig, generate_frames
    from tasks.model.evaluate import leave_last_positive_split
    from tasks.model.training.config import TrainParams
    from tasks.model.training.tracking import EXPERIMENT_NAME
    from tasks.model.training.tune import PLOT_FILE, TABLE_FILE, tune_two_tower

    bench = _bench_tune()
    frames = generate_frames(
        GeneratorConfig(n_users=80, n_illusts=150, n_artists=15, n_tags=15, days=3, seed=11)
    )
    split = leave_last_positive_split(frames.interactions, item_ids=frames.illusts["illust_id"])
    assert len(split.test_user_idx) > 20
    illusts = bench.train_part_popularity(frames.illusts, split)
    settings, start, end = bench.prepare_home(split, illusts, recsys_home)

    # What the search reads holds nothing of a test user at or after their held-out positive.
    mirror = pd.read_sql(
        "SELECT user_id, create_time FROM mirror_interactions",
        get_engine(settings.recsys_db_url),
    )
    cut = pd.DataFrame(
        {
            "user_id": split.user_ids[split.test_user_idx],
            "test_time": pd.to_datetime(split.test_time),
        }
    )
    joined = mirror.assign(create_time=pd.to_datetime(mirror["create_time"])).merge(cut)
    assert len(joined) > 0 and not (joined["create_time"] >= joined["test_time"]).any()

    base = TrainParams(**TINY)
    result = tune_two_tower(settings, start, end, base, {"dim": [8, 16]})

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    parents = [r for r in runs if r.info.run_name.startswith("tune ")]
    assert [r.info.run_id for r in parents] == [result.parent_run_id]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["dim"] for r in children) == ["16", "8"]
    assert len({r.data.tags["params_fingerprint"] for r in children}) == 2
    assert parent.data.params["grid.dim"] == "8,16"
    assert parent.data.params["selection_metric"] == "HR@10"

    table = client.load_table(experiment.experiment_id, TABLE_FILE, [parent.info.run_id])
    assert table["trial"].tolist() == [0, 1] and table["dim"].tolist() == [8, 16]
    by_run = {r.info.run_id: r.data.metrics["HR_at_10"] for r in children}
    assert table["run_id"].map(by_run).tolist() == pytest.approx(table["HR@10"].tolist())
    scores = table["HR@10"].to_numpy()
    chosen = int(np.argmax(scores))  # argmax: the first of equal maxima, as the tie-break
    assert table["chosen"].tolist() == [chosen == 0, chosen == 1]
    assert result.best == TrainParams(**{**TINY, "dim": [8, 16][chosen]})
    assert parent.data.params["best.dim"] == str([8, 16][chosen])
    assert parent.data.metrics["best_HR_at_10"] == pytest.approx(scores[chosen])
    assert result.base_rank == (1 if chosen == 0 else 2)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {TABLE_FILE, PLOT_FILE, "grid.json", "chosen_params.json"} <= artifacts
    assert parent.info.status == "FINISHED"

    out = bench.summary(result)
    assert [t["dim"] for t in out["trials"]] == [8, 16]
    assert out["best"]["dim"] == [8, 16][chosen] and out["defaults_rank"] == result.base_rank
