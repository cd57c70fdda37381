"""train_two_tower end to end on a tiny recsys DB (MariaDB and SQLite) with a real MLflow store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from tasks.core.db import get_engine
from tasks.core.schema import (
    ensure_recsys_schema,
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
    ensure_recsys_schema(engine)
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


TINY = dict(
    loss="pointwise",
    epochs=2,
    batch_size=32,
    dim=8,
    hidden=8,
    hash_bins=64,
    history_len=6,
    chunk_rows=64,
)


def _registered_versions(settings) -> list:  # type: ignore[no-untyped-def]
    from model_registry.registry import client as registry_client

    client = registry_client(settings)  # explicit registry URI: MLflow's global one may differ
    try:
        return client.search_model_versions(f"name = '{settings.registered_model_name}'")
    except Exception:
        return []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(positives=False, negatives=False), "both classes"),
        (dict(positives=False), "both classes"),
    ],
)
def test_bad_samples_raise_and_register_nothing(settings, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    from tasks.model.training.stage import TrainingDataError, TrainParams, train_two_tower

    seed_recsys_db(settings.recsys_db_url, **kwargs)
    with pytest.raises(TrainingDataError, match=message):
        train_two_tower(settings, START, END, params=TrainParams(**TINY))
    assert _registered_versions(settings) == []


def test_feature_config_naming_missing_column_raises(settings) -> None:  # type: ignore[no-untyped-def]
    from tasks.model.features import FeatureConfigError, FeatureSpec, default_feature_config
    from tasks.model.training.stage import TrainParams, train_two_tower

    seed_recsys_db(settings.recsys_db_url)
    config = (*default_feature_config(embedding_dim=8), FeatureSpec("colour", "item", "one_hot"))
    with pytest.raises(FeatureConfigError, match="colour"):
        train_two_tower(settings, START, END, params=TrainParams(**TINY, feature_config=config))
    assert _registered_versions(settings) == []


@pytest.mark.slow
def test_inbatch_softmax_trains_on_positives_only_sqlite(settings) -> None:  # type: ignore[no-untyped-def]
    """The softmax loss streams only positives (150 minus the 30 holdout ones) from SQLite."""
    import mlflow

    from tasks.model.training.stage import TrainParams, train_two_tower

    seed_recsys_db(settings.recsys_db_url)
    params = TrainParams(**{**TINY, "epochs": 1, "loss": "inbatch_softmax"})
    result = train_two_tower(settings, START, END, params=params)
    assert result.n_train + result.n_val == 150 - 30
    assert set(result.metrics) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20"}
    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["loss"] == "inbatch_softmax"
    assert result.epochs_run == 1
    # A named run (not MLflow's seeded random name: issue 13 item 5) with the baseline chart.
    assert run.info.run_name == "two_tower 2024-01-01..2024-02-01 manual"
    artifacts = {
        a.path
        for a in mlflow.MlflowClient(settings.mlflow_tracking_uri).list_artifacts(result.run_id)
    }
    assert "model_vs_baselines.png" in artifacts
    # The featurized-samples cache (epochs after the first read it) is removed afterwards.
    assert not list(settings.artifacts_dir.glob("train-cache-*"))
