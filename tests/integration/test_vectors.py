"""Vector refresh into Milvus Lite + the KV store: atomic alias/pointer switches, reruns, pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core.db import get_engine
from tasks.data.sources.generate import GeneratorConfig, generate_frames
from tasks.serving import vectors as vectors_mod
from tasks.serving.deploy import deploy_saved_model
from tasks.serving.kv import open_kv
from tasks.serving.local_model import LocalModel
from tasks.serving.namespace import current_namespace, namespace_meta
from tasks.serving.recall import decode_ids, decode_scored, decode_vector
from tasks.serving.vectors import (
    ITEMS_ALIAS,
    RefreshError,
    alias_target,
    open_milvus,
    refresh_vectors,
)
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
from tests.doubles.mirror import write_mirror_frames

CONFIG = GeneratorConfig(n_users=60, n_illusts=300, n_artists=30, days=7, views_per_user=15)


@pytest.fixture(scope="module")
def frames():  # type: ignore[no-untyped-def]
    return generate_frames(CONFIG)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        v: export_hash_two_tower(root / str(v), HashModelSpec(dim=8, buckets=503, seed=v))
        for v in (1, 2, 3)
    }


@pytest.fixture
def served(settings, frames, model_dirs):  # type: ignore[no-untyped-def]
    write_mirror_frames(get_engine(settings.recsys_db_url), frames)
    deploy_saved_model(settings, 1, model_dirs[1])
    return settings


def test_refresh_publishes_collection_alias_and_namespace(served, frames, model_dirs) -> None:  # type: ignore[no-untyped-def]
    result = refresh_vectors(served)
    as_of = frames.interactions["create_time"].max().to_pydatetime()
    assert result.version == 1 and result.data_as_of == as_of
    assert result.collection == f"items_v1_{as_of:%Y%m%d%H%M%S}"
    assert result.kv_namespace == f"v1_{as_of:%Y%m%d%H%M%S}"
    assert (result.n_items, result.n_users, result.dim) == (300, 60, 8)

    client = open_milvus(served)
    kv = open_kv(served)
    try:
        assert alias_target(client) == result.collection
        assert client.get_collection_stats(result.collection)["row_count"] == 300
        assert current_namespace(kv) == result.kv_namespace
        meta = namespace_meta(kv, result.kv_namespace)
        assert (
            meta is not None and meta["collection"] == result.collection and meta["n_items"] == 300
        )

        model = LocalModel(model_dirs[1])
        ns = result.kv_namespace
        user = int(frames.interactions["user_id"].iloc[0])
        vec = decode_vector(kv.get(f"{ns}:user_vec:{user}"))
        hist = decode_ids(kv.get(f"{ns}:hist:{user}"))
        expected = model.predict(
            "user_tower", {"user_id": np.array([user]), "history": np.array([hist or [0]])}
        )["embedding"][0]
        assert vec is not None
        np.testing.assert_allclose(vec, expected, rtol=1e-5, atol=1e-6)
        # The ANN on the alias agrees with brute force over the item tower.
        illusts = frames.illusts.sort_values("illust_id")
        from tasks.model.features import item_features_from_frame

        items = model.predict("item_tower", item_features_from_frame(illusts))["embedding"]
        brute = illusts["illust_id"].to_numpy()[np.argsort(-(items @ vec))[:5]].tolist()
        hits = client.search(ITEMS_ALIAS, data=[vec.tolist()], limit=5, anns_field="embedding")
        assert [h["illust_id"] for h in hits[0]] == brute
        seen = set(decode_ids(kv.get(f"{ns}:seen:{user}")))
        expected_seen = set(
            frames.interactions.loc[frames.interactions.user_id == user, "illust_id"]
        )
        assert seen == expected_seen
        assert len(decode_scored(kv.get(f"{ns}:hot"))) == 300  # fewer illusts than hot_n
    finally:
        kv.close()
        client.close()

    again = refresh_vectors(served)
    assert again.reused_collection and again.collection == result.collection
    assert again.kv_namespace == result.kv_namespace
    client = open_milvus(served)
    assert client.get_collection_stats(result.collection)["row_count"] == 300
    client.close()


def test_failure_mid_refresh_leaves_alias_and_pointer_on_old_copy(
    served, model_dirs, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    first = refresh_vectors(served)
    deploy_saved_model(served, 2, model_dirs[2])

    def broken_check(client, name, *, expected_rows):  # type: ignore[no-untyped-def]
        raise RefreshError(f"simulated failure after inserting into {name}")

    monkeypatch.setattr(vectors_mod, "verify_collection", broken_check)
    with pytest.raises(RefreshError, match="simulated failure"):
        refresh_vectors(served)
    monkeypatch.undo()
    client = open_milvus(served)
    kv = open_kv(served)
    try:
        assert alias_target(client) == first.collection
        assert current_namespace(kv) == first.kv_namespace
        partial = first.collection.replace("items_v1", "items_v2")
        assert partial in client.list_collections()  # written, never published
        # A search through the alias still answers from the complete old collection.
        hits = client.search(ITEMS_ALIAS, data=[[0.1] * 8], limit=3, anns_field="embedding")
        assert len(hits[0]) == 3
    finally:
        kv.close()
        client.close()

    second = refresh_vectors(served)
    assert second.version == 2 and not second.reused_collection
    client = open_milvus(served)
    try:
        assert alias_target(client) == second.collection == partial
        assert client.get_collection_stats(partial)["row_count"] == 300
    finally:
        client.close()


def test_keep_last_prunes_old_collections_and_namespaces(served, model_dirs) -> None:  # type: ignore[no-untyped-def]
    results = []
    for version in (1, 2, 3):
        if version > 1:
            deploy_saved_model(served, version, model_dirs[version])
        results.append(refresh_vectors(served, keep_last=2))
    assert results[2].dropped_collections == (results[0].collection,)
    assert results[2].dropped_namespaces == (results[0].kv_namespace,)
    client = open_milvus(served)
    kv = open_kv(served)
    try:
        names = sorted(c for c in client.list_collections() if c.startswith("items_v"))
        assert names == sorted([results[1].collection, results[2].collection])
        assert list(kv.scan_keys(f"{results[0].kv_namespace}:")) == []
        assert kv.get(f"{results[1].kv_namespace}:meta") is not None
        assert current_namespace(kv) == results[2].kv_namespace
    finally:
        kv.close()
        client.close()


def test_refresh_without_a_deployed_model_says_so(settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RefreshError, match="no live model version"):
        refresh_vectors(settings)
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        refresh_vectors(settings, keep_last=0)
