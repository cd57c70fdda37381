"""Precomputed top-N sorted sets: brute-force check, data-time freshness stamp, idempotent rerun."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.core.db import get_engine
from tasks.data.sources.generate import GeneratorConfig, generate_frames
from tasks.model.features import item_features_from_frame
from tasks.serving.deploy import deploy_saved_model
from tasks.serving.kv import open_kv
from tasks.serving.local_model import LocalModel
from tasks.serving.namespace import topn_key, topn_meta_key
from tasks.serving.precompute import precompute_topn
from tasks.serving.recall import decode_vector
from tasks.serving.vectors import RefreshError, refresh_vectors
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
from tests.doubles.mirror import write_mirror_frames


def test_precompute_matches_brute_force_and_is_idempotent(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    frames = generate_frames(
        GeneratorConfig(n_users=40, n_illusts=200, n_artists=20, days=7, views_per_user=15)
    )
    write_mirror_frames(get_engine(settings.recsys_db_url), frames)
    model_dir = export_hash_two_tower(tmp_path / "m", HashModelSpec(dim=8, buckets=503, seed=4))
    deploy_saved_model(settings, 1, model_dir)
    with pytest.raises(RefreshError, match="run refresh_vectors first"):
        precompute_topn(settings, n=10)
    refreshed = refresh_vectors(settings)

    result = precompute_topn(settings, n=10, active_days=3)
    as_of = frames.interactions["create_time"].max()
    active = sorted(
        frames.interactions.loc[
            frames.interactions.create_time >= as_of - np.timedelta64(3, "D"), "user_id"
        ].unique()
    )
    assert result.kv_namespace == refreshed.kv_namespace
    assert result.n_users == len(active) > 0
    assert result.data_as_of == as_of.to_pydatetime()

    illusts = frames.illusts.sort_values("illust_id")
    items = LocalModel(model_dir).predict("item_tower", item_features_from_frame(illusts))[
        "embedding"
    ]
    ids = illusts["illust_id"].to_numpy()
    kv = open_kv(settings)
    try:
        for user in active[:5]:
            vec = decode_vector(kv.get(f"{result.kv_namespace}:user_vec:{user}"))
            seen = set(frames.interactions.loc[frames.interactions.user_id == user, "illust_id"])
            scores = items @ vec
            order = [int(ids[j]) for j in np.argsort(-scores) if int(ids[j]) not in seen][:10]
            got = kv.zrevrange(topn_key(result.kv_namespace, user), 0, -1)
            assert [int(m) for m, _ in got] == order
            expected_scores = [float(scores[np.searchsorted(ids, i)]) for i in order]
            np.testing.assert_allclose([s for _, s in got], expected_scores, rtol=1e-4, atol=1e-5)
        inactive = sorted(set(frames.interactions.user_id) - set(active))
        if inactive:
            assert kv.zrevrange(topn_key(result.kv_namespace, inactive[0]), 0, -1) == []
        meta = json.loads(kv.get(topn_meta_key(result.kv_namespace)) or b"{}")
        assert meta == {"data_as_of": as_of.isoformat(), "n": 10, "n_users": len(active)}
        before = kv.zrevrange(topn_key(result.kv_namespace, active[0]), 0, -1)
        assert precompute_topn(settings, n=10, active_days=3) == result
        assert kv.zrevrange(topn_key(result.kv_namespace, active[0]), 0, -1) == before
    finally:
        kv.close()
    with pytest.raises(ValueError, match="got 0"):
        precompute_topn(settings, n=0)
