"""The online API and a forced refresh on state that ANOTHER process built (issue 13).

A subprocess runs ``refresh_vectors`` and exits: its collection is complete but ``NotLoad``
in this process, as after any restart. Then, here: the API loads it (and the next one after
a namespace switch), ``/healthz`` is a readiness check, a refresh into a fresh Redis reuses
it, the OpenAPI spec documents what is returned, ``/docs`` needs no CDN, ids above int64 are
422, and a Milvus outage logs a bounded number of lines.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
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
from tasks.serving.kv import open_kv
from tasks.serving.namespace import current_namespace, namespace_meta, switch_namespace, write_meta
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
from tests.doubles.mirror import write_mirror_frames

ROOT = Path(__file__).resolve().parents[2]
INT64_MAX = 2**63 - 1

_BUILD = """
import json, sys
from tasks.core.settings import load_settings
from tasks.serving.vectors import refresh_vectors
r = refresh_vectors(load_settings(sys.argv[1]))
print(json.dumps({"collection": r.collection, "ns": r.kv_namespace}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Mirror data + deployed v1 here; vectors built by a subprocess that has exited."""
    import json

    home = tmp_path_factory.mktemp("restart_home")
    settings = load_settings(home)
    frames = generate_frames(
        GeneratorConfig(n_users=40, n_illusts=200, n_artists=20, days=5, views_per_user=12)
    )
    write_mirror_frames(get_engine(settings.recsys_db_url), frames)
    model_dir = export_hash_two_tower(home / "export", HashModelSpec(dim=8, buckets=503, seed=9))
    deploy_saved_model(settings, 1, model_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(home)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    kv = open_kv(settings)
    try:
        users = sorted(set(frames.interactions["user_id"].astype(int)))
        realtime = [u for u in users if kv.get(f"{out['ns']}:user_vec:{u}") is not None]
    finally:
        kv.close()
    assert len(realtime) >= 3
    return {"settings": settings, "frames": frames, "users": realtime, **out}


@pytest.fixture
def client(built) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(built["settings"])) as test_client:
        yield test_client


def _release(settings: Settings, collection: str) -> None:
    """Make the collection ``NotLoad`` in this process too (as if this process restarted)."""
    from tasks.serving.vectors import open_milvus

    client = open_milvus(settings)
    try:
        client.release_collection(collection)
        assert "NotLoad" in str(client.get_load_state(collection)["state"])
    finally:
        client.close()


# -- item 7: a forced refresh into a fresh Redis reuses the complete, unloaded collection ---
def test_refresh_into_fresh_redis_reuses_unloaded_collection(built, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    from tasks.serving.vectors import refresh_vectors

    _release(built["settings"], built["collection"])
    settings = built["settings"].replace(kv_url=redis_url)
    kv = open_kv(settings)
    try:
        assert current_namespace(kv) is None  # a new, empty Redis
        result = refresh_vectors(settings)
        assert result.reused_collection and result.collection == built["collection"]
        assert current_namespace(kv) == built["ns"] == result.kv_namespace
        meta = namespace_meta(kv, built["ns"])
        assert meta is not None and (meta["n_items"], meta["n_users"]) == (200, 40)
        assert kv.get(f"{built['ns']}:user_vec:{built['users'][0]}") is not None
    finally:
        kv.close()


# -- item 1: a fresh API on a collection another process built ------------------------------
def test_fresh_api_loads_the_collection_and_serves_ann(built) -> None:  # type: ignore[no-untyped-def]
    _release(built["settings"], built["collection"])
    with TestClient(create_app(built["settings"])) as c:
        for user in built["users"][:3]:
            body = c.get(f"/recommend/{user}", params={"k": 10}).json()
            assert body["source"] == "realtime" and body["degraded"] == [], body
            assert body["items"][0]["channel"] == "ann"
        target = int(built["frames"].illusts["illust_id"].iloc[5])
        similar = c.get(f"/similar/{target}", params={"k": 4}).json()
        assert (
            similar["source"] == "ann" and similar["degraded"] == [] and len(similar["items"]) == 4
        )
        health = c.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "kv": True, "milvus": True, "model": True}


def test_namespace_switch_loads_the_new_collection(client, built) -> None:  # type: ignore[no-untyped-def]
    """The next refresh (another process) leaves its collection NotLoad here: the API loads it
    when the KV pointer moves to the namespace naming it, and searches it."""
    from tasks.serving.vectors import build_item_collection

    state = client.app.state.serving
    user = built["users"][0]
    ids = built["frames"].illusts["illust_id"].to_numpy(np.int64)
    vectors = np.random.default_rng(5).normal(size=(len(ids), 8)).astype(np.float32)
    nxt, old_ns = "items_v2_20000101000000", built["ns"]
    build_item_collection(state.milvus, nxt, ids, vectors, batch_size=100, lite=True)
    state.milvus.release_collection(nxt)
    kv = state.kv
    ns = "v2_20000101000000"
    for kind in ("user_vec", "hist", "seen"):
        raw = kv.get(f"{old_ns}:{kind}:{user}")
        if raw is not None:
            kv.set(f"{ns}:{kind}:{user}", raw)
    write_meta(kv, ns, {**namespace_meta(kv, old_ns), "version": 2, "collection": nxt})  # type: ignore[dict-item]
    switch_namespace(kv, ns, time.time())
    try:
        state.view = None  # the 1 s namespace cache expired
        body = client.get(f"/recommend/{user}", params={"k": 5}).json()
        assert body["namespace"] == ns and body["degraded"] == [], body
        uvec = np.frombuffer(kv.get(f"{ns}:user_vec:{user}"), dtype="<f4")
        seen = {int(i) for i in np.frombuffer(kv.get(f"{ns}:seen:{user}") or b"", dtype="<i8")}
        scores = vectors @ uvec
        best = [int(ids[i]) for i in np.argsort(-scores) if int(ids[i]) not in seen]
        assert body["items"][0] == {
            "illust_id": best[0],
            "score": pytest.approx(float(scores[list(ids).index(best[0])]), rel=1e-4),
            "channel": "ann",
        }
        assert client.get("/healthz").status_code == 200
    finally:
        switch_namespace(kv, old_ns, time.time() + 1)
        state.milvus.drop_collection(nxt)
        state.view = None


# -- item 1: /healthz is readiness ---------------------------------------------------------
def test_healthz_is_503_naming_the_failing_part(built) -> None:  # type: ignore[no-untyped-def]
    down: Settings = built["settings"].replace(milvus_uri="http://127.0.0.1:1")
    with TestClient(create_app(down)) as c:
        health = c.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert (body["status"], body["kv"], body["milvus"], body["model"]) == (
            "degraded", True, False, True,
        )  # fmt: skip
        assert set(body["failing"]) == {"milvus"}
        rec = c.get(f"/recommend/{built['users'][0]}", params={"k": 5})
        assert rec.status_code == 200 and "milvus" in rec.json()["degraded"]
    with TestClient(create_app(built["settings"])) as c:
        c.app.state.serving.model = None
        health = c.get("/healthz")
        assert health.status_code == 503 and set(health.json()["failing"]) == {"model"}


# -- item 6: the OpenAPI spec matches real responses; /docs needs no CDN --------------------
def _validate(spec: dict[str, Any], path: str, status: int, body: Any) -> None:
    from jsonschema import Draft202012Validator

    media = spec["paths"][path]["get"]["responses"][str(status)]["content"]["application/json"]
    schema = {**media["schema"], "components": spec["components"]}
    Draft202012Validator(schema).validate(body)


def test_openapi_documents_the_real_responses(client, built) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    user = built["users"][0]
    cases = [
        ("/recommend/{user_id}", f"/recommend/{user}?k=3", 200),
        ("/recommend/{user_id}", "/recommend/987654?k=3", 200),  # unknown user: hot
        ("/similar/{illust_id}", "/similar/7?k=3", 200),
        ("/healthz", "/healthz", 200),
        ("/recommend/{user_id}", "/recommend/1?k=0", 422),
        ("/similar/{illust_id}", "/similar/abc", 422),
    ]
    for template, url, status in cases:
        response = client.get(url, headers={"X-Request-ID": "req-42"})
        assert response.status_code == status, (url, response.text)
        _validate(spec, template, status, response.json())
        assert response.headers["X-Request-ID"] == "req-42"
        if template != "/healthz":
            assert response.json()["request_id"] == "req-42"
    items = spec["components"]["schemas"]["Item"]["properties"]
    assert set(items) == {"illust_id", "score", "channel"}
    fresh = client.get(f"/recommend/{user}")
    assert len(fresh.headers["X-Request-ID"]) == 32
    assert fresh.json()["request_id"] == fresh.headers["X-Request-ID"]
    bad = client.get("/similar/1", headers={"X-Request-ID": "x" * 500})  # not echoed
    assert bad.headers["X-Request-ID"] != "x" * 500


def test_docs_are_served_without_a_cdn(client) -> None:  # type: ignore[no-untyped-def]
    import re

    html = client.get("/docs")
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
    assert "http" not in html.text.replace("http-equiv", "")  # no absolute URL at all
    assets = [u for u in urls if u.startswith("/static/")]
    assert {u.rsplit("/", 1)[1] for u in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for url in [*assets, "/openapi.json"]:
        assert url in urls
        assert client.get(url).status_code == 200, url


# -- item 8: ids outside positive int64 are 422 naming the value ----------------------------
@pytest.mark.parametrize(
    "path",
    [
        f"/recommend/{INT64_MAX + 1}",
        f"/similar/{INT64_MAX + 1}",
        "/recommend/0",
        "/similar/0",
        f"/recommend/{10**30}",
    ],
)
def test_ids_beyond_int64_are_422(client, path: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(path)
    assert response.status_code == 422
    assert f"(got '{path.rsplit('/', 1)[1]}')" in response.json()["error"]


def test_largest_int64_id_is_accepted(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get(f"/recommend/{INT64_MAX}", params={"k": 3}).json()
    assert body["source"] == "hot" and "unknown_user" in body["degraded"]


# -- item 9: Milvus down -> bounded log volume ----------------------------------------------
def test_milvus_outage_logs_a_bounded_number_of_lines(
    built, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Without the limiter each request logs pymilvus' RPC-error traceback (~45 lines) plus our
    warning; with it: each kind once whole, then one summary line per window."""
    from milvus_lite.server_manager import server_manager_instance

    import api.app as app_mod

    monkeypatch.setattr(app_mod, "LOG_EVERY_S", 0.5)
    handlers = [
        h for h in logging.getLogger("pymilvus").handlers if isinstance(h, logging.StreamHandler)
    ]
    sink = io.StringIO()
    saved = [(h, h.setStream(sink)) for h in handlers]
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    user = built["users"][1]
    try:
        with TestClient(create_app(built["settings"])) as c:
            assert c.get(f"/recommend/{user}").json()["degraded"] == []
            server_manager_instance.release_server(str(built["settings"].milvus_uri))
            caplog.clear()
            caplog.set_level(logging.WARNING, logger="recsys4pix.api")
            for round_ in range(2):
                for _ in range(25):
                    body = c.get(f"/recommend/{user}", params={"k": 5}).json()
                    assert "milvus" in body["degraded"] and len(body["items"]) == 5
                    c.get("/similar/3", params={"k": 3})
                if round_ == 0:
                    time.sleep(0.6)
            ours = [r for r in caplog.records if r.name.startswith("recsys4pix.api")]
            lines = sum(formatter.format(r).count("\n") + 1 for r in ours)
            lines += sink.getvalue().count("\n")
            summaries = [r.getMessage() for r in ours if "times in the last 0.5s" in r.getMessage()]
    finally:
        for h, stream in saved:
            h.setStream(stream or sys.stderr)
    # 100 failing requests: a handful of kinds, each whole once (<= ~60 lines with its
    # traceback), then one line per kind after the 0.5 s window.
    print(f"log lines for 100 requests with Milvus down: {lines} in {len(ours)} api records")
    assert lines <= 400, lines
    assert len(ours) <= 12, [r.getMessage()[:80] for r in ours]
    assert summaries, "no summary line with a count"
    assert all("\n" not in s for s in summaries)
