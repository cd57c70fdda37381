"""The online API over a small prepared dataset: every path and every fallback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tasks.core.db import get_engine
from tasks.core.settings import Settings, load_settings
from tasks.data.sources.generate import GeneratorConfig, generate_frames
from tasks.serving.deploy import deploy_saved_model
from tasks.serving.kv import RedisKV, open_kv
from tasks.serving.namespace import topn_key
from tasks.serving.precompute import precompute_topn
from tasks.serving.recall import decode_ids, decode_scored
from tasks.serving.vectors import refresh_vectors
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
from tests.doubles.mirror import write_mirror_frames


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Mirror data -> deploy v1 -> refresh -> precompute for users active on the last day."""
    home = tmp_path_factory.mktemp("api_home")
    settings = load_settings(home)
    frames = generate_frames(
        GeneratorConfig(n_users=60, n_illusts=300, n_artists=30, days=7, views_per_user=15)
    )
    write_mirror_frames(get_engine(settings.recsys_db_url), frames)
    model_dir = export_hash_two_tower(home / "export", HashModelSpec(dim=8, buckets=503, seed=9))
    deploy_saved_model(settings, 1, model_dir)
    refreshed = refresh_vectors(settings)
    pre = precompute_topn(settings, n=30, active_days=1)
    kv = open_kv(settings)
    ns = refreshed.kv_namespace
    topn_users = {int(k.rsplit(":", 1)[1]) for k in kv.scan_keys(f"{ns}:topn:")}
    all_users = sorted(set(frames.interactions["user_id"]))
    realtime_users = [
        u for u in all_users if u not in topn_users and kv.get(f"{ns}:hist:{u}") is not None
    ]
    hot = decode_scored(kv.get(f"{ns}:hot"))
    kv.close()
    assert pre.n_users == len(topn_users) > 0 and len(realtime_users) >= 3
    return {
        "settings": settings,
        "ns": ns,
        "collection": refreshed.collection,
        "topn_users": sorted(topn_users),
        "realtime_users": realtime_users,
        "hot": hot,
        "frames": frames,
    }


@pytest.fixture
def client(prepared) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(prepared["settings"])) as test_client:
        yield test_client


def _no_rid(body: dict[str, Any]) -> dict[str, Any]:
    """A body without its per-request ``request_id``."""
    return {k: v for k, v in body.items() if k != "request_id"}


def _seen(prepared: dict[str, Any], user: int) -> set[int]:
    inter = prepared["frames"].interactions
    return set(inter.loc[inter.user_id == user, "illust_id"].astype(int))


def test_realtime_path_merges_channels_and_drops_seen(client, prepared) -> None:  # type: ignore[no-untyped-def]
    user = prepared["realtime_users"][0]
    body = client.get(f"/recommend/{user}", params={"k": 12}).json()
    assert body["source"] == "realtime" and body["degraded"] == []
    assert body["ranked"] is False  # no ranker deployed: round robin, not degraded
    ids = [item["illust_id"] for item in body["items"]]
    assert len(ids) == 12 == len(set(ids))
    assert not set(ids) & _seen(prepared, user)
    channels = [item["channel"] for item in body["items"]]
    assert channels[0] == "ann" and "hot" in channels
    # ANN head equals a direct search on the alias minus seen items.
    state = client.app.state.serving
    vec = np.frombuffer(state.kv.get(f"{prepared['ns']}:user_vec:{user}"), dtype="<f4")
    hits = state.milvus.search("items", data=[vec.tolist()], limit=100, anns_field="embedding")
    direct = [h["illust_id"] for h in hits[0] if h["illust_id"] not in _seen(prepared, user)]
    assert ids[0] == direct[0]


def test_precomputed_path_serves_the_sorted_set(client, prepared) -> None:  # type: ignore[no-untyped-def]
    user = prepared["topn_users"][0]
    body = client.get(f"/recommend/{user}", params={"k": 5}).json()
    assert body["source"] == "precomputed"
    kv = client.app.state.serving.kv
    expected = [int(m) for m, _ in kv.zrevrange(topn_key(prepared["ns"], user), 0, 4)]
    assert [i["illust_id"] for i in body["items"]] == expected
    assert {i["channel"] for i in body["items"]} == {"precomputed"}


def test_unknown_user_gets_the_hot_list(client, prepared) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/recommend/987654321", params={"k": 4}).json()
    assert body["source"] == "hot" and "unknown_user" in body["degraded"]
    assert [i["illust_id"] for i in body["items"]] == [i for i, _ in prepared["hot"][:4]]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/recommend/abc", "'abc'"),
        ("/recommend/1?k=0", "k: Input should be greater than or equal to 1 (got '0')"),
        ("/recommend/1?k=201", "less than or equal to 200"),
        ("/recommend/1?k=ten", "'ten'"),
        ("/recommend/-3", "'-3'"),
        ("/similar/1.5", "'1.5'"),
        ("/recommend/1?theta=2", "theta"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_value(client, path: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(path)
    assert response.status_code == 422
    assert needle in response.json()["error"]


def test_milvus_down_falls_back_to_other_channels(prepared) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = prepared["settings"].replace(milvus_uri="http://127.0.0.1:1")
    user = prepared["realtime_users"][1]
    with TestClient(create_app(settings)) as c:
        body = c.get(f"/recommend/{user}", params={"k": 10}).json()
        assert body["source"] == "realtime" and "milvus" in body["degraded"]
        channels = {i["channel"] for i in body["items"]}
        assert "ann" not in channels and channels <= {"i2i", "follow_new", "hot"}
        assert len(body["items"]) == 10 and not {i["illust_id"] for i in body["items"]} & _seen(
            prepared, user
        )
        similar = c.get("/similar/5", params={"k": 3}).json()
        assert similar["source"] in ("i2i", "hot") and "milvus" in similar["degraded"]
        assert c.get("/healthz").json()["status"] == "degraded"


def test_milvus_client_closed_mid_life(client, prepared) -> None:  # type: ignore[no-untyped-def]
    client.app.state.serving.milvus.close()
    user = prepared["realtime_users"][2]
    body = client.get(f"/recommend/{user}", params={"k": 6}).json()
    assert body["source"] == "realtime" and "milvus" in body["degraded"] and len(body["items"]) == 6


def test_kv_down_from_the_start_answers_200_with_kv_degraded(prepared) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = prepared["settings"].replace(kv_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as c:
        response = c.get("/recommend/1", params={"k": 5})
        assert response.status_code == 200
        assert response.json()["source"] == "hot" and response.json()["degraded"] == ["kv"]
        assert c.get("/version").json()["kv_namespace"] is None
        assert c.get("/healthz").json()["kv"] is False


def test_kv_lost_mid_life_serves_last_known_hot_list(client, prepared) -> None:  # type: ignore[no-untyped-def]
    state = client.app.state.serving
    state.kv = RedisKV("redis://127.0.0.1:1/0", socket_timeout=0.5)
    state.view = None  # the namespace cache expired
    body = client.get(f"/recommend/{prepared['realtime_users'][0]}", params={"k": 5}).json()
    assert body["source"] == "hot" and body["degraded"] == ["kv"]
    assert [i["illust_id"] for i in body["items"]] == [i for i, _ in prepared["hot"][:5]]


def test_missing_user_vector_uses_the_user_tower_or_degrades(client, prepared) -> None:  # type: ignore[no-untyped-def]
    user = prepared["realtime_users"][0]
    state = client.app.state.serving
    key = f"{prepared['ns']}:user_vec:{user}"
    saved = state.kv.get(key)
    state.kv.delete(key)
    try:
        with_model = client.get(f"/recommend/{user}", params={"k": 8}).json()
        assert with_model["degraded"] == [] and with_model["items"][0]["channel"] == "ann"
        state.model = None  # model down
        no_model = client.get(f"/recommend/{user}", params={"k": 8}).json()
        assert "model" in no_model["degraded"] and len(no_model["items"]) == 8
        assert "ann" not in {i["channel"] for i in no_model["items"]}
    finally:
        state.kv.set(key, saved)
    hist = decode_ids(state.kv.get(f"{prepared['ns']}:hist:{user}"))
    assert hist  # the user tower needed a history to work from


def test_dpp_rerank_returns_k_distinct_unseen_items(client, prepared) -> None:  # type: ignore[no-untyped-def]
    user = prepared["realtime_users"][0]
    plain = client.get(f"/recommend/{user}", params={"k": 10}).json()
    diverse = client.get(f"/recommend/{user}", params={"k": 10, "dpp": "true", "theta": 0.9}).json()
    assert diverse["degraded"] == []
    ids = [i["illust_id"] for i in diverse["items"]]
    assert len(ids) == len(set(ids)) == 10 and not set(ids) & _seen(prepared, user)
    assert ids != [i["illust_id"] for i in plain["items"]]
    windowed = client.get(
        f"/recommend/{user}", params={"k": 10, "dpp": "true", "theta": 0.9, "window": 3}
    ).json()
    assert windowed["degraded"] == [] and len({i["illust_id"] for i in windowed["items"]}) == 10
    assert windowed["items"][0]["illust_id"] == ids[0]  # both start from the top-quality item


def test_similar_version_and_health(client, prepared) -> None:  # type: ignore[no-untyped-def]
    target = int(prepared["frames"].illusts["illust_id"].iloc[3])
    similar = client.get(f"/similar/{target}", params={"k": 5}).json()
    assert similar["source"] == "ann" and len(similar["items"]) == 5
    assert target not in {i["illust_id"] for i in similar["items"]}
    assert client.get("/version").json() == {
        "model_version": 1,
        "ranker_version": None,  # no ranker deployed here (tests/integration/test_api_ranking.py)
        "collection": prepared["collection"],
        "items_alias_target": prepared["collection"],
        "kv_namespace": prepared["ns"],
        "vectors_model_version": 1,
        "data_as_of": prepared["frames"].interactions["create_time"].max().isoformat(),
    }
    assert client.get("/healthz").json() == {
        "status": "ok",
        "kv": True,
        "milvus": True,
        "model": True,
    }


def test_no_refresh_yet_means_hot_fallback_not_error(tmp_path: Path) -> None:
    with TestClient(create_app(load_settings(tmp_path))) as c:
        body = c.get("/recommend/1").json()
        assert (
            body["source"] == "hot" and body["degraded"] == ["no_namespace"] and body["items"] == []
        )
        assert c.get("/version").json()["model_version"] is None


def test_stale_precomputed_lists_are_bypassed(client, prepared) -> None:  # type: ignore[no-untyped-def]
    import json

    state = client.app.state.serving
    key = f"{prepared['ns']}:topn_meta"
    saved = state.kv.get(key)
    meta = json.loads(saved)
    state.kv.set(key, json.dumps({**meta, "data_as_of": "2000-01-01T00:00:00"}))
    state.view = None
    try:
        body = client.get(f"/recommend/{prepared['topn_users'][0]}", params={"k": 5}).json()
        assert body["source"] == "realtime"
    finally:
        state.kv.set(key, saved)
        state.view = None
    body = client.get(f"/recommend/{prepared['topn_users'][0]}", params={"k": 5}).json()
    assert body["source"] == "precomputed"


def test_kv_pointer_alone_decides_which_vectors_are_searched(client, prepared) -> None:  # type: ignore[no-untyped-def]
    """Mid-refresh the ``items`` alias may already name the next collection while the KV
    pointer still names the old namespace: the API keeps searching the collection that
    namespace was built with, so user and item vectors never come from two models."""
    from tasks.serving.vectors import build_item_collection, switch_alias

    state = client.app.state.serving
    user = prepared["realtime_users"][0]
    target = int(prepared["frames"].illusts["illust_id"].iloc[3])
    before = client.get(f"/recommend/{user}", params={"k": 8}).json()
    similar_before = client.get(f"/similar/{target}", params={"k": 5}).json()
    ids = prepared["frames"].illusts["illust_id"].to_numpy(np.int64)
    decoy = "items_decoy_next_model"
    # the "next model": same items, unrelated vectors (reversed order of similarity)
    rng = np.random.default_rng(3)
    build_item_collection(
        state.milvus, decoy, ids, rng.normal(size=(len(ids), 8)).astype(np.float32),
        artist_ids=np.zeros(len(ids), np.int64), batch_size=100, lite=True,
    )  # fmt: skip
    try:
        switch_alias(state.milvus, decoy)
        assert state.milvus.describe_alias("items")["collection_name"] == decoy
        after = client.get(f"/recommend/{user}", params={"k": 8}).json()
        assert _no_rid(after) == _no_rid(before) and after["items"][0]["channel"] == "ann"
        similar_after = client.get(f"/similar/{target}", params={"k": 5}).json()
        assert _no_rid(similar_after) == _no_rid(similar_before)
        assert client.get("/version").json()["collection"] == prepared["collection"]
        assert client.get("/version").json()["items_alias_target"] == decoy
    finally:
        switch_alias(state.milvus, prepared["collection"])
        state.milvus.drop_collection(decoy)
