"""train_ranker end to end on tiny generated data (SQLite recsys DB, real MLflow store): the
``rank`` signature answers probabilities for raw inputs, and the planted tastes are learnt."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.data.sources.generate import GeneratorConfig, generate_frames, interval_days

CONFIG = GeneratorConfig(n_users=150, n_illusts=300, n_artists=30, n_tags=30, days=4, seed=7)


@pytest.fixture
def trained(settings):  # type: ignore[no-untyped-def]
    from tasks.core.db import get_engine
    from tasks.data.sampling import build_samples
    from tasks.model.ranker.config import RankerParams
    from tasks.model.ranker.stage import train_ranker
    from tests.doubles.mirror import write_mirror_frames

    write_mirror_frames(get_engine(settings.recsys_db_url), generate_frames(CONFIG))
    days = interval_days(CONFIG)
    for start, end in days:
        build_samples(settings, start, end, negatives_per_positive=2)
    params = RankerParams(
        epochs=2,
        batch_size=128,
        learning_rate=0.01,
        dim=8,
        hash_bins=64,
        history_len=10,
        tag_history_len=20,
        deep_layers=(32, 16),
        projection_dim=8,
    )
    return train_ranker(settings, days[0][0], days[-1][1], params=params), params


@pytest.mark.slow
def test_train_ranker_exports_rank_signature_and_learns_tastes(settings, trained) -> None:  # type: ignore[no-untyped-def]
    import mlflow
    import tensorflow as tf

    from tasks.model.ranker.features import RANK_INPUTS, RECALL_CHANNELS
    from tasks.model.ranker.model import SIGNATURE, load_ranker_config, to_tensors

    result, params = trained
    assert result.n_train > 0 and result.n_val > 0 and result.n_sampled > 0
    assert result.epochs_run == 2
    assert set(result.metrics) == {"AUC", "GAUC", "logloss", "HR@10", "NDCG@10"}
    assert all(np.isfinite(v) for v in result.metrics.values())
    assert result.metrics["AUC"] > 0.55, result.metrics

    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "ranker"
    assert run.info.run_name == "ranker 2026-01-01..2026-01-05 manual"
    assert {"AUC", "GAUC", "logloss", "NDCG_at_10"} <= set(run.data.metrics)

    loaded = tf.saved_model.load(result.export_dir)
    signature = loaded.signatures[SIGNATURE]
    assert set(signature.structured_input_signature[1]) == set(RANK_INPUTS)
    c = len(RECALL_CHANNELS)
    raw = {
        "user_id": np.array([1, 999_999]),  # a known and an unknown user
        "history": np.array([[5, 3] + [0] * 8, [0] * 10]),
        "user_bookmarks": np.array([2, 0]),
        "user_views": np.array([7, 0]),
        "illust_id": np.array([4, 123_456]),  # an unknown illust: OOV bucket
        "artist_id": np.array([3, 0]),
        "tags": np.array(["cat|sky", ""], dtype=object),
        "width": np.array([800, 0]),
        "height": np.array([600, 0]),
        "sanity_level": np.array([2, 9]),
        "restrict": np.array([0, 0]),
        "x_restrict": np.array([0, 0]),
        "total_bookmarks": np.array([10, 0]),
        "total_view": np.array([100, 0]),
        "artist_followed": np.array([1, 0]),
        "artist_history": np.array([1, 0]),
        "tag_overlap": np.array([2, 0]),
        "item_age_s": np.array([3600, -1]),
        "channel_hit": np.array([[1, 0, 0, 1], [0] * c], np.float32),
        "channel_score": np.array([[0.8, 0, 0, 12.0], [0] * c], np.float32),
        "channel_rank": np.array([[1, 0, 0, 5], [0] * c]),
    }
    score = signature(**to_tensors(raw))["score"].numpy()
    assert score.shape == (2,) and score.dtype == np.float32
    assert np.all(np.isfinite(score)) and np.all((score >= 0) & (score <= 1))
    saved = load_ranker_config(result.export_dir)
    assert saved["ranker"]["inputs"] == list(RANK_INPUTS)
    assert saved["ranker"]["params"]["projection_dim"] == params.projection_dim

    # The architecture: the configured stack of (low-rank) keras-rs FeatureCross layers.
    import json

    import keras_rs

    from tasks.model.features import config_from_json
    from tasks.model.ranker.model import build_ranker

    config, stats = config_from_json(json.dumps(saved))
    model = build_ranker(config, stats, params)
    crosses = [layer for layer in model.layers if isinstance(layer, keras_rs.layers.FeatureCross)]
    assert len(crosses) == params.cross_layers == 2
    assert all(layer.projection_dim == params.projection_dim for layer in crosses)

    # A re-run for the same interval and params reuses the finished run (Airflow retries).
    from tasks.model.ranker.stage import train_ranker

    again = train_ranker(settings, result.interval_start, result.interval_end, params=params)
    assert again.reused and again.run_id == result.run_id
    assert again.export_dir == result.export_dir and again.n_val == result.n_val
    assert again.metrics == pytest.approx(result.metrics)


def test_interval_without_rows_raises(settings) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime

    from tasks.core.db import get_engine
    from tasks.model.ranker.stage import RankerDataError, train_ranker
    from tests.doubles.mirror import write_mirror_frames

    write_mirror_frames(get_engine(settings.recsys_db_url), generate_frames(CONFIG))
    with pytest.raises(RankerDataError, match="both classes"):  # the data starts in 2026
        train_ranker(settings, datetime(2025, 1, 1), datetime(2025, 1, 2))


def test_rows_read_the_same_from_sqlite_and_mariadb(settings, mariadb_database) -> None:  # type: ignore[no-untyped-def]
    """The readers are SQLAlchemy Core: MariaDB gives the rows SQLite gives."""
    import pandas as pd
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.schema import samples
    from tasks.data.sampling import build_samples
    from tasks.model.ranker.rows import (
        read_ranking_frames,
        read_sampled_negatives,
        training_rows,
    )
    from tests.doubles.mirror import write_mirror_frames

    config = GeneratorConfig(n_users=30, n_illusts=60, n_artists=10, n_tags=10, days=2, seed=3)
    frames = generate_frames(config)
    lite, maria = get_engine(settings.recsys_db_url), get_engine(mariadb_database)
    write_mirror_frames(lite, frames)
    write_mirror_frames(maria, frames)
    days = interval_days(config)
    for start, end in days:
        build_samples(settings, start, end, negatives_per_positive=2)
    with lite.connect() as conn:
        sample_rows = [dict(r._mapping) for r in conn.execute(sa.select(samples))]
    with maria.begin() as conn:
        conn.execute(sa.insert(samples), sample_rows)
    start, end = days[0][0], days[-1][1]
    out = []
    for engine in (lite, maria):
        ranking = read_ranking_frames(engine, end)
        negatives = read_sampled_negatives(engine, start, end)
        out.append(training_rows(ranking.interactions, negatives, start, end))
    assert len(out[0]) > 0 and (out[0]["source"] == "sampled").any()
    pd.testing.assert_frame_equal(out[0], out[1], check_dtype=False)
