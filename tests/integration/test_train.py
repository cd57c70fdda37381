"""train_two_tower end to end on a tiny recsys DB (MariaDB and SQLite) with a real MLflow store."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.db import get_engine
from tasks.schema import (
    create_recsys_schema,
    mirror_illusts,
    mirror_interactions,
    mirror_users,
    samples,
)

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2024, 1, 1)
END = datetime(2024, 2, 1)


def seed_recsys_db(
    url: str,
    *,
    n_users: int = 30,
    n_items: int = 40,
    seed: int = 0,
    negatives: bool = True,
    positives: bool = True,
) -> dict[str, int]:
    """Tiny mirror + samples: each user bookmarks items of 'their' cluster (id % 4)."""
    rng = np.random.default_rng(seed)
    engine = get_engine(url)
    create_recsys_schema(engine)
    tag_names = ["cat", "dog", "sky", "sea"]
    illusts = [
        {
            "illust_id": i,
            "artist_id": 100 + i % 7,
            "tags": json.dumps([{"name": tag_names[i % 4], "translatedName": None, "id": i % 4}]),
            "width": int(rng.integers(500, 2000)),
            "height": int(rng.integers(500, 2000)),
            "sanity_level": int(rng.choice([2, 4, 6])),
            "restrict": 0,
            "x_restrict": int(i % 9 == 0),
            "total_bookmarks": int(rng.integers(0, 5000)),
            "total_view": int(rng.integers(10, 100000)),
            "create_time": START,
            "update_time": START,
        }
        for i in range(1, n_items + 1)
    ]
    users = [
        {"user_id": u, "username": f"u{u}", "create_time": START} for u in range(1, n_users + 1)
    ]
    interactions, sample_rows = [], []
    for u in range(1, n_users + 1):
        liked = [i for i in range(1, n_items + 1) if i % 4 == u % 4]
        chosen = rng.choice(liked, size=5, replace=False)
        for k, item in enumerate(chosen):
            interactions.append(
                {
                    "user_id": u,
                    "illust_id": int(item),
                    "label": 1,
                    "create_time": START + timedelta(days=int(k * 5 + u % 3), hours=u),
                }
            )
        others = [i for i in range(1, n_items + 1) if i % 4 != u % 4]
        for item in rng.choice(others, size=8, replace=False):
            sample_rows.append((u, int(item), 0, "random"))
        if positives:
            sample_rows += [(u, int(i), 1, "positive") for i in chosen]
    sample_rows = [r for r in sample_rows if negatives or r[2] == 1]
    with engine.begin() as conn:
        for table in (samples, mirror_interactions, mirror_illusts, mirror_users):
            conn.execute(sa.delete(table))
        conn.execute(sa.insert(mirror_illusts), illusts)
        conn.execute(sa.insert(mirror_users), users)
        conn.execute(sa.insert(mirror_interactions), interactions)
        if sample_rows:
            conn.execute(
                sa.insert(samples),
                [
                    {
                        "user_id": u,
                        "illust_id": i,
                        "label": lab,
                        "source": src,
                        "interval_start": START,
                        "interval_end": END,
                        "created_at": END,
                    }
                    for u, i, lab, src in sample_rows
                ],
            )
    return {"samples": len(sample_rows), "interactions": len(interactions)}


TINY = dict(epochs=2, batch_size=32, dim=8, hidden=8, hash_bins=64, history_len=6, chunk_rows=64)


def _registered_versions(settings) -> list:  # type: ignore[no-untyped-def]
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    try:
        return client.search_model_versions(f"name = '{settings.registered_model_name}'")
    except Exception:
        return []


@pytest.mark.slow
@pytest.mark.mariadb
def test_train_two_tower_on_mariadb_logs_run_and_exports(settings, mariadb_database) -> None:  # type: ignore[no-untyped-def]
    import mlflow
    import tensorflow as tf

    from tasks.model import to_tensors
    from tasks.train import TrainParams, train_two_tower

    settings = settings.replace(recsys_db_url=mariadb_database)
    counts = seed_recsys_db(settings.recsys_db_url)
    result = train_two_tower(settings, START, END, params=TrainParams(**TINY))

    # MLflow: params, per-epoch curves, plot, feature config, baselines, model.
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss"] == "pointwise"
    assert run.data.tags["data_interval_end"] == END.isoformat()
    assert len(client.get_metric_history(result.run_id, "train_loss")) == result.epochs_run
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"feature_config.json", "learning_curves.png", "saved_model"} <= artifacts
    assert {
        "HR_at_10",
        "NDCG_at_10",
        "MostPop.HR_at_10",
        "EASE.HR_at_10",
        "ItemKNN.HR_at_10",
    } <= set(run.data.metrics)
    assert 0.0 <= result.metrics["HR@10"] <= 1.0
    assert result.n_train + result.n_val <= counts["samples"]
    assert result.n_train > 0 and result.n_val > 0

    # Export: three named signatures, loadable, scores are probabilities.
    shown = subprocess.run(
        [str(ROOT / ".venv/bin/saved_model_cli"), "show", "--dir", result.export_dir, "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("item_tower", "user_tower", "score"):
        assert f"signature_def['{name}']" in shown
    loaded = tf.saved_model.load(result.export_dir)
    feats = {
        "user_id": np.array([1, 999], np.int64),
        "history": np.array([[1, 5, 0], [0, 0, 0]], np.int64),
        "illust_id": np.array([1, 12345], np.int64),
        "artist_id": np.array([101, 7], np.int64),
        "tags": np.array(["cat", "never-seen|tag"], object),
        **{
            k: np.array([1, 2], np.int64)
            for k in (
                "width",
                "height",
                "sanity_level",
                "restrict",
                "x_restrict",
                "total_bookmarks",
                "total_view",
            )
        },
    }
    score = loaded.signatures["score"](**to_tensors(feats))["score"].numpy()
    assert score.shape == (2,) and np.all((score > 0) & (score < 1))

    # The pyfunc flavour loads and scores the input example.
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    frame = pd.DataFrame(
        {**{k: v for k, v in feats.items() if k != "history"}, "history": ["1|5", ""]}
    )
    frame["tags"] = frame["tags"].astype(str)
    out = pyfunc.predict(frame)
    assert np.allclose(np.asarray(out["score"]), score, atol=1e-5)

    # Idempotent: same interval + params returns the same run, no second training.
    again = train_two_tower(settings, START, END, params=TrainParams(**TINY))
    assert again.run_id == result.run_id and again.reused


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(positives=False, negatives=False), "both classes"),
        (dict(positives=False), "both classes"),
    ],
)
def test_bad_samples_raise_and_register_nothing(settings, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    from tasks.train import TrainingDataError, TrainParams, train_two_tower

    seed_recsys_db(settings.recsys_db_url, **kwargs)
    with pytest.raises(TrainingDataError, match=message):
        train_two_tower(settings, START, END, params=TrainParams(**TINY))
    assert _registered_versions(settings) == []


def test_feature_config_naming_missing_column_raises(settings) -> None:  # type: ignore[no-untyped-def]
    from tasks.features import FeatureConfigError, FeatureSpec, default_feature_config
    from tasks.train import TrainParams, train_two_tower

    seed_recsys_db(settings.recsys_db_url)
    config = (*default_feature_config(embedding_dim=8), FeatureSpec("colour", "item", "one_hot"))
    with pytest.raises(FeatureConfigError, match="colour"):
        train_two_tower(settings, START, END, params=TrainParams(**TINY, feature_config=config))
    assert _registered_versions(settings) == []
