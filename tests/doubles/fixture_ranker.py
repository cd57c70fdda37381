"""A small trained DCN-V2 ranker for serving tests (a test double: real model, tiny data).

``export_fixture_ranker`` trains the real ranker (``tasks.model.ranker``: the same feature
builder, model and export as ``train_ranker``) on the shown rows of generated frames (label 1
= bookmarked, 0 = viewed), one or two epochs, without MLflow or a database, and writes the
SavedModel with its ``rank`` signature. Exports are cached per test session by the frames'
generator config, so several test modules pay for one training. Production never imports it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from tasks.core.common import get_logger
from tasks.data.sources.frames import BusinessFrames
from tasks.model.ranker.config import RankerParams

log = get_logger("fixture_ranker")

FIXTURE_RANKER_PARAMS = RankerParams(
    epochs=2,
    batch_size=128,
    learning_rate=0.01,
    dim=8,
    hash_bins=64,
    history_len=10,
    tag_history_len=20,
    deep_layers=(16,),
    projection_dim=4,
    dropout=0.0,
)

_CACHE: dict[tuple[object, RankerParams], Path] = {}


def export_fixture_ranker(
    dst: str | Path,
    frames: BusinessFrames,
    params: RankerParams = FIXTURE_RANKER_PARAMS,
    *,
    cache_key: object | None = None,
) -> Path:
    """Train the ranker on ``frames``' shown rows and export it to ``dst`` (a new directory).

    ``cache_key`` (e.g. the frames' ``GeneratorConfig``): reuse a model trained earlier in
    this process on the same key and params (copied to ``dst``).
    """
    dst = Path(dst)
    key = (cache_key, params)
    if cache_key is not None and key in _CACHE and _CACHE[key].exists():
        shutil.copytree(_CACHE[key], dst)
        return dst
    import keras

    from tasks.model.features import fit_feature_stats
    from tasks.model.ranker.features import RankingFeatureBuilder
    from tasks.model.ranker.model import (
        build_ranker,
        dataset,
        export_ranker,
        ranker_feature_config,
    )

    inter = frames.interactions.sort_values("create_time", kind="mergesort")
    builder = RankingFeatureBuilder(
        inter,
        frames.illusts,
        frames.follows,
        history_len=params.history_len,
        tag_history_len=params.tag_history_len,
    )
    features = builder.features(inter["user_id"], inter["illust_id"], inter["create_time"])
    labels = (inter["label"].to_numpy() == 1).astype(np.int64)
    config = ranker_feature_config(params)
    stats = fit_feature_stats(config, builder.catalogue.features)
    keras.utils.set_random_seed(params.seed)
    model = build_ranker(config, stats, params)
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
    )
    model.fit(
        dataset(features, labels, batch_size=params.batch_size, shuffle_seed=params.seed),
        epochs=params.epochs,
        verbose=0,
    )
    export_ranker(model, dst)
    if cache_key is not None:
        cached = Path(tempfile.mkdtemp(prefix="fixture-ranker-")) / "model"
        shutil.copytree(dst, cached)
        _CACHE[key] = cached
    log.info("fixture ranker trained on %d rows, exported to %s", len(labels), dst)
    return dst
