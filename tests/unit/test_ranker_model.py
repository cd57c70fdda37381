"""The ranker's ``id_features`` switch: without it no per-id weight exists and the scores do
not depend on which user, illust or history ids a row carries; the signature is unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tasks.data.sources.generate import GeneratorConfig, generate_frames
from tasks.model.ranker.config import RankerParams
from tasks.model.ranker.features import RANK_INPUTS

PARAMS = RankerParams(
    dim=8, hash_bins=64, history_len=5, tag_history_len=10, deep_layers=(8,), dropout=0.0
)


@pytest.fixture(scope="module")
def rows():  # type: ignore[no-untyped-def]
    from tasks.model.features import fit_feature_stats
    from tasks.model.ranker.features import RankingFeatureBuilder
    from tasks.model.ranker.model import ranker_feature_config

    frames = generate_frames(
        GeneratorConfig(n_users=30, n_illusts=60, n_artists=6, n_tags=12, days=2, seed=5)
    )
    inter = frames.interactions.sort_values("create_time", kind="mergesort").tail(40)
    builder = RankingFeatureBuilder(
        frames.interactions, frames.illusts, frames.follows, history_len=5, tag_history_len=10
    )
    features = builder.features(inter["user_id"], inter["illust_id"], inter["create_time"])
    config = ranker_feature_config(PARAMS)
    return features, config, fit_feature_stats(config, builder.catalogue.features)


def _other_ids(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same rows with their user ids, illust ids and histories reversed."""
    return {
        **features,
        "user_id": features["user_id"][::-1].copy(),
        "illust_id": features["illust_id"][::-1].copy(),
        "history": features["history"][::-1].copy(),
    }


def _build(config, stats, params: RankerParams):  # type: ignore[no-untyped-def]
    import keras

    from tasks.model.ranker.model import build_ranker

    keras.utils.set_random_seed(0)
    return build_ranker(config, stats, params)


def test_without_id_features_scores_ignore_ids(rows) -> None:  # type: ignore[no-untyped-def]
    from tasks.model.ranker.model import predict

    features, config, stats = rows
    assert len(np.unique(features["illust_id"])) > 5  # the reversal really changes ids
    model = _build(config, stats, dataclasses.replace(PARAMS, id_features=False))
    assert list(model.input) == list(RANK_INPUTS)  # same signature inputs either way
    paths = [w.path for w in model.weights]
    # (the history reads the illust_id embedding: no illust_id weight, no history either)
    assert not [p for p in paths if "illust_id" in p or "user_id" in p], paths
    np.testing.assert_allclose(predict(model, _other_ids(features)), predict(model, features))


def test_with_id_features_scores_depend_on_ids(rows) -> None:  # type: ignore[no-untyped-def]
    from tasks.model.ranker.model import predict

    features, config, stats = rows
    with_ids = _build(config, stats, dataclasses.replace(PARAMS, id_features=True))
    without = _build(config, stats, dataclasses.replace(PARAMS, id_features=False))
    ids_only = {w.path for w in with_ids.weights} - {w.path for w in without.weights}
    assert any("illust_id" in p for p in ids_only) and any("user_id" in p for p in ids_only)
    embeddings = {p for p in ids_only if p.endswith("/embeddings")}
    assert embeddings == {
        "ranker_inputs/enc_illust_id/emb_illust_id/embeddings",
        "ranker_inputs/enc_user_id/emb_user_id/embeddings",
    }
    moved = np.abs(predict(with_ids, _other_ids(features)) - predict(with_ids, features))
    assert moved.max() > 1e-6
