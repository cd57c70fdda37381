"""The ranking stage online: candidates from every channel -> one ranker call -> top-k.

A small real DCN-V2 ranker (tests/doubles/fixture_ranker.py) is deployed as model ``ranker``
next to the fixture two-tower. The API's order must equal the candidate pool sorted by the
ranker's scores computed here directly (the training feature builder on the generated frames,
the SavedModel's ``rank`` signature called in this test); a ranker that is down or hangs gives
the round-robin order with ``ranker`` in ``degraded`` and status 200; precompute writes the
same ranked lists.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tasks.core.db import get_engine
from tasks.core.settings import load_settings
from tasks.data.sources.generate import GeneratorConfig, generate_frames
from tasks.model.ranker.features import RankingFeatureBuilder
from tasks.serving.deploy import deploy_saved_model
from tasks.serving.kv import open_kv
from tasks.serving.namespace import (
    follow_new_key,
    hist_key,
    hot_key,
    i2i_key,
    namespace_meta,
    seen_key,
    topn_key,
    topn_meta_key,
    user_vec_key,
)
from tasks.serving.precompute import precompute_topn
from tasks.serving.ranking import (
    RankerError,
    RESTRanker,
    build_pool,
    scores_from_outputs,
)
from tasks.serving.recall import (
    combine_neighbors,
    decode_ids,
    decode_scored,
    decode_vector,
)
from tasks.serving.vectors import refresh_vectors
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
from tests.doubles.fixture_ranker import FIXTURE_RANKER_PARAMS, export_fixture_ranker
from tests.doubles.mirror import write_mirror_frames

CONFIG = GeneratorConfig(n_users=60, n_illusts=300, n_artists=30, days=7, views_per_user=15)
K = 10


# -- pure parts, hand-computed ---------------------------------------------------------------
def test_build_pool_merges_round_robin_and_keeps_each_channels_evidence() -> None:
    channels = [
        ("ann", [(10, 0.9), (11, 0.8), (12, 0.7)]),
        ("i2i", [(11, 2.0), (13, 1.0)]),
        ("hot", [(14, 5.0), (10, 4.0), (15, 3.0)]),
    ]
    pool = build_pool(7, channels, 5, exclude={12})
    # round robin: ann 10, i2i 11, hot 14, ann (11 taken, 12 excluded) -, i2i 13, hot (10
    # taken) 15 -> the first five distinct unseen ids.
    assert [c.illust_id for c in pool.candidates] == [10, 11, 14, 13, 15]
    assert [c.channel for c in pool.candidates] == ["ann", "i2i", "hot", "i2i", "hot"]
    # evidence columns: ann, i2i, follow_new, hot; rank = 1-based position in the channel.
    assert pool.evidence.rank.tolist() == [
        [1, 0, 0, 2],  # 10: ann #1, hot #2
        [2, 1, 0, 0],  # 11: ann #2, i2i #1
        [0, 0, 0, 1],  # 14: hot #1
        [0, 2, 0, 0],  # 13: i2i #2
        [0, 0, 0, 3],  # 15: hot #3
    ]
    assert pool.evidence.score[0].tolist() == pytest.approx([0.9, 0.0, 0.0, 4.0])
    assert pool.evidence.hit.sum(axis=1).tolist() == [2.0, 2.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="'bogus'"):
        build_pool(7, [("bogus", [(1, 1.0)])], 3)


@pytest.mark.parametrize(
    "answer",
    [
        {"score": [0.2, 0.7]},  # in process
        {"outputs": [0.2, 0.7]},  # columnar, single output: name dropped
        {"outputs": {"score": [0.2, 0.7]}},  # columnar, named
        {"predictions": [0.2, 0.7]},  # row format, single output
        {"predictions": [{"score": 0.2}, {"score": 0.7}]},  # row format, named
    ],
)
def test_scores_from_every_tf_serving_answer_form(answer: dict[str, Any]) -> None:
    assert scores_from_outputs(answer, 2).tolist() == pytest.approx([0.2, 0.7])


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        ({"error": "no such signature"}, "no such signature"),
        ({"outputs": [0.2]}, "1 scores for 2"),
        ({"outputs": [0.2, 1.5]}, "not probabilities"),
        ({"outputs": [0.2, float("nan")]}, "not probabilities"),
        ({"result": [0.2, 0.7]}, "no score"),
    ],
)
def test_bad_ranker_answers_are_errors(answer: dict[str, Any], needle: str) -> None:
    with pytest.raises(RankerError, match=needle):
        scores_from_outputs(answer, 2)


# -- the API with a real small ranker --------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Mirror data -> two-tower v1 + ranker v1 deployed -> refresh (no precompute yet)."""
    home = tmp_path_factory.mktemp("ranking_home")
    settings = load_settings(home)
    frames = generate_frames(CONFIG)
    write_mirror_frames(get_engine(settings.recsys_db_url), frames)
    two_tower = export_hash_two_tower(home / "export", HashModelSpec(dim=8, buckets=503, seed=9))
    deploy_saved_model(settings, 1, two_tower)
    ranker_dir = export_fixture_ranker(home / "ranker_export", frames, cache_key=CONFIG)
    deploy_saved_model(settings, 1, ranker_dir, model_name=settings.ranker_model_name)
    refreshed = refresh_vectors(settings)
    kv = open_kv(settings)
    ns = refreshed.kv_namespace
    users = sorted(set(frames.interactions["user_id"].astype(int)))
    with_vec = [u for u in users if kv.get(user_vec_key(ns, u)) is not None]
    meta = namespace_meta(kv, ns)
    kv.close()
    assert len(with_vec) >= 3 and meta
    return {
        "settings": settings,
        "frames": frames,
        "ns": ns,
        "users": with_vec,
        "ranker_dir": ranker_dir,
        "as_of": datetime.fromisoformat(meta["data_as_of"]),
        "realtime_lists": {},
    }


@pytest.fixture(scope="module")
def client(prepared) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(prepared["settings"])) as test_client:
        yield test_client


def _direct_pool(state: Any, ns: str, user: int) -> Any:
    """The user's channels read straight from KV and Milvus -> the same pool the API builds."""
    kv = state.kv
    raw_vec, raw_seen, raw_hist, raw_follow, raw_hot = kv.mget(
        [
            user_vec_key(ns, user),
            seen_key(ns, user),
            hist_key(ns, user),
            follow_new_key(ns, user),
            hot_key(ns),
        ]
    )
    seen = set(decode_ids(raw_seen))
    history = decode_ids(raw_hist)
    vector = decode_vector(raw_vec)
    collection = state.view.meta["collection"]
    hits = state.milvus.search(
        collection, data=[vector.tolist()], limit=200 + len(seen), anns_field="embedding"
    )
    channels = [("ann", [(int(h["illust_id"]), float(h["distance"])) for h in hits[0]])]
    if history:
        lists = [decode_scored(r) for r in kv.mget([i2i_key(ns, i) for i in history[:5]])]
        channels.append(("i2i", combine_neighbors(lists, n=200 + len(seen))))
    follow = decode_ids(raw_follow)
    if follow:
        channels.append(("follow_new", [(i, 1.0 / (r + 1)) for r, i in enumerate(follow)]))
    channels.append(("hot", decode_scored(raw_hot)))
    return build_pool(user, channels, 200, exclude=seen), seen


def _direct_scores(prepared: dict[str, Any], pool: Any) -> np.ndarray:
    """The ranker's scores on the pool: training's feature builder on the generated frames
    (not the API's mirror read) and the SavedModel's ``rank`` signature called here."""
    import tensorflow as tf

    from tasks.model.ranker.model import to_tensors

    frames = prepared["frames"]
    builder = RankingFeatureBuilder(
        frames.interactions,
        frames.illusts,
        frames.follows,
        history_len=FIXTURE_RANKER_PARAMS.history_len,
        tag_history_len=FIXTURE_RANKER_PARAMS.tag_history_len,
    )
    n = len(pool.candidates)
    request = prepared["as_of"].replace(microsecond=0) + timedelta(seconds=1)
    feats = builder.features(
        [pool.user_id] * n, [c.illust_id for c in pool.candidates], [request] * n, pool.evidence
    )
    loaded = tf.saved_model.load(str(prepared["ranker_dir"]))
    return loaded.signatures["rank"](**to_tensors(feats))["score"].numpy()


def test_api_orders_the_pool_by_the_rankers_scores(client, prepared) -> None:  # type: ignore[no-untyped-def]
    state = client.app.state.serving
    assert state.ranker is not None and state.ranker_version == 1
    checked = 0
    for user in prepared["users"][:3]:
        body = client.get(f"/recommend/{user}", params={"k": K}).json()
        assert body["source"] == "realtime" and body["degraded"] == [], body
        assert body["ranked"] is True
        pool, seen = _direct_pool(state, prepared["ns"], user)
        assert len(pool.candidates) == 200  # the pool spans every channel
        assert {"ann", "hot"} <= {c.channel for c in pool.candidates}
        scores = _direct_scores(prepared, pool)
        order = np.argsort(-scores, kind="stable")[:K]
        expected = [pool.candidates[i].illust_id for i in order]
        got = [item["illust_id"] for item in body["items"]]
        assert got == expected
        assert [item["score"] for item in body["items"]] == pytest.approx(
            scores[order].tolist(), abs=1e-5
        )
        assert not set(got) & seen
        # ranking changed the round-robin order (else this test could not fail)
        assert got != [c.illust_id for c in pool.candidates[:K]]
        prepared["realtime_lists"][user] = got
        checked += 1
    assert checked == 3


def test_dpp_uses_the_rankers_scores_as_quality(client, prepared) -> None:  # type: ignore[no-untyped-def]
    user = prepared["users"][0]
    plain = client.get(f"/recommend/{user}", params={"k": K}).json()
    theta0 = client.get(f"/recommend/{user}", params={"k": K, "dpp": True, "theta": 0}).json()
    # theta = 0 keeps the quality order: the ranker's order.
    assert theta0["ranked"] is True and theta0["degraded"] == []
    assert [i["illust_id"] for i in theta0["items"]] == [i["illust_id"] for i in plain["items"]]
    diverse = client.get(f"/recommend/{user}", params={"k": K, "dpp": True, "theta": 1}).json()
    ids = [i["illust_id"] for i in diverse["items"]]
    assert len(ids) == K == len(set(ids)) and diverse["ranked"] is True


def _round_robin(prepared: dict[str, Any], user: int) -> dict[str, Any]:
    with TestClient(create_app(prepared["settings"], ranking=False)) as plain:
        body = plain.get(f"/recommend/{user}", params={"k": K}).json()
    assert body["ranked"] is False and body["degraded"] == []
    return body


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ranker_down_serves_round_robin_flagged(prepared) -> None:  # type: ignore[no-untyped-def]
    user = prepared["users"][1]
    expected = _round_robin(prepared, user)
    # TF-Serving configured but nothing listens: the ranker call is refused.
    down = dataclasses.replace(
        prepared["settings"], tfserving_url=f"http://127.0.0.1:{_closed_port()}"
    )
    with TestClient(create_app(down)) as test_client:
        response = test_client.get(f"/recommend/{user}", params={"k": K})
        health = test_client.get("/healthz").json()
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "realtime" and body["ranked"] is False
    assert "ranker" in body["degraded"]
    assert [i["illust_id"] for i in body["items"]] == [i["illust_id"] for i in expected["items"]]
    assert health["ranker"] is False and "ranker" in health["failing"]


def test_ranker_that_hangs_times_out_to_round_robin(prepared) -> None:  # type: ignore[no-untyped-def]
    user = prepared["users"][2]
    expected = _round_robin(prepared, user)
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        hung = dataclasses.replace(prepared["settings"], tfserving_url=f"http://127.0.0.1:{port}")
        with TestClient(create_app(hung)) as test_client:
            began = time.perf_counter()
            body = test_client.get(f"/recommend/{user}", params={"k": K}).json()
            first_s = time.perf_counter() - began
            began = time.perf_counter()
            again = test_client.get(f"/recommend/{user}", params={"k": K}).json()
            again_s = time.perf_counter() - began
    assert body["ranked"] is False and "ranker" in body["degraded"]
    assert [i["illust_id"] for i in body["items"]] == [i["illust_id"] for i in expected["items"]]
    assert 0.4 < first_s < 3.0  # the 0.5 s ranker timeout, not the client's patience
    assert "ranker" in again["degraded"] and again_s < 0.4  # backed off: no second wait


def test_rest_ranker_speaks_tf_servings_columnar_format(prepared) -> None:  # type: ignore[no-untyped-def]
    """RESTRanker against a minimal TF-Serving-like endpoint running the real SavedModel."""
    import tensorflow as tf

    from tasks.model.ranker.model import to_tensors
    from tasks.model.ranker.saved import sample_rank_inputs

    loaded = tf.saved_model.load(str(prepared["ranker_dir"]))
    seen: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, **body})
            raw = {k: np.asarray(v) for k, v in body["inputs"].items()}
            scores = loaded.signatures["rank"](**to_tensors(raw))["score"].numpy()
            payload = json.dumps({"outputs": scores.tolist()}).encode()  # single output: bare
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rest = RESTRanker(url, "ranker", version=1, timeout=30.0)  # a busy shared CI machine
        inputs = sample_rank_inputs(3)
        got = rest.rank(inputs)
    finally:
        server.shutdown()
    direct = loaded.signatures["rank"](**to_tensors(inputs))["score"].numpy()
    assert got.tolist() == pytest.approx(direct.tolist(), abs=1e-6)
    assert seen[0]["path"] == "/v1/models/ranker/versions/1:predict"
    assert seen[0]["signature_name"] == "rank"
    assert np.asarray(seen[0]["inputs"]["channel_rank"]).shape == (3, 4)


def test_precompute_writes_the_ranked_lists(client, prepared) -> None:  # type: ignore[no-untyped-def]
    assert prepared["realtime_lists"], "runs after the realtime ranking test"
    result = precompute_topn(prepared["settings"], n=K, active_days=30)
    assert result.ranker_version == 1
    assert result.n_ranked == result.n_users > 0 and result.n_fallback == 0
    kv = client.app.state.serving.kv
    assert json.loads(kv.get(topn_meta_key(prepared["ns"])))["ranker_version"] == 1
    for user, realtime in prepared["realtime_lists"].items():
        top = kv.zrevrange(topn_key(prepared["ns"], user), 0, K - 1)
        assert [int(m) for m, _ in top] == realtime  # the API's own ranked list
        assert all(0.0 <= s <= 1.0 for _, s in top)  # the ranker's probabilities
    client.app.state.serving.view = None  # re-read the namespace: the lists are fresh now
    user = next(iter(prepared["realtime_lists"]))
    body = client.get(f"/recommend/{user}", params={"k": K}).json()
    assert body["source"] == "precomputed" and body["ranked"] is True
    assert [i["illust_id"] for i in body["items"]] == prepared["realtime_lists"][user]


def test_no_ranker_deployed_is_not_degraded(prepared, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without a ranker the lists are round robin and nothing is flagged (e.g. before the
    first ranker champion)."""
    settings = dataclasses.replace(prepared["settings"], serving_base_path=tmp_path / "serving")
    deploy_saved_model(settings, 1, prepared["settings"].serving_base_path / "two_tower" / "1")
    user = prepared["users"][1]
    with TestClient(create_app(settings)) as test_client:
        state = test_client.app.state.serving
        state.precompute_max_age, state.view = timedelta(seconds=-1), None  # realtime path
        body = test_client.get(f"/recommend/{user}", params={"k": K}).json()
    assert body["source"] == "realtime" and state.ranker is None
    assert body["degraded"] == [] and body["ranked"] is False
