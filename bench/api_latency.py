"""Bench: online API latency with wrk on loopback vs the same lookups called directly.

Prepares a small dataset in a temporary RECSYS_HOME (generator -> mirror tables -> fixture
two-tower SavedModel, dim 64 -> deploy; a small real DCN-V2 ranker trained on the same data
(tests/doubles/fixture_ranker.py) -> deployed as model ``ranker`` -> refresh (flushed, indexed,
loaded Milvus Lite collection behind alias ``items``) -> precompute top-N for recently active
users), then runs uvicorn with the app on 127.0.0.1 (in this process: Milvus Lite serves one
process) and loads it with ``wrk`` (installed with apt-get if missing), one connection, for:

* the real-time path with ranking: users without a precomputed list (user vector -> ANN +
  channels -> a pool of 200 candidates -> one in-process ranker call -> top-k);
* the same path without the ranker (a second app, ``ranking=False``: round robin), so the
  ranker's added p50/p99 at 200 candidates is measured side by side;
* the precomputed path: users with a fresh sorted set.

Floor, same run: the real-time path's core lookups called directly in Python (KV mget of the
user's vector and seen list + ANN search on the alias for 200 + seen candidates + one direct
``rank`` call on 200 candidates' prepared inputs), one after another, half before and half after
the real-time wrk run. ratio = ranked real-time API p99 / direct p99 (lower is better), target
1.5. ``--no-ranker`` measures the old path (no ranker deployed; floor without the ranker
call). Last stdout line: one JSON object.

    .venv/bin/python bench/api_latency.py [--duration 10] [--k 20] [--no-ranker]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk is not installed and apt-get install wrk did not provide it")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _parse_wrk(output: str) -> dict[str, float]:
    """p50/p99 (ms), requests/s and error counts from ``wrk --latency`` output."""
    out: dict[str, float] = {}
    for pct in ("50", "99"):
        match = re.search(rf"^\s*{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            raise RuntimeError(f"no {pct}% latency in wrk output:\n{output}")
        out[f"p{pct}_ms"] = float(match.group(1)) * _UNITS[match.group(2)]
    out["requests_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = re.search(r"(\d+) requests in", output)
    out["requests"] = float(total.group(1)) if total else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    out["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    return out


def _run_wrk(
    wrk: str, url: str, paths: list[str], duration: int, workdir: Path
) -> dict[str, float]:
    script = workdir / f"paths_{abs(hash(tuple(paths)))}.lua"
    lua_paths = ", ".join(f'"{p}"' for p in paths)
    script.write_text(
        f"paths = {{{lua_paths}}}\ni = 0\n"
        "request = function()\n  i = i + 1\n"
        '  return wrk.format("GET", paths[(i % #paths) + 1])\nend\n'
    )
    result = subprocess.run(
        [wrk, "-t1", "-c1", f"-d{duration}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    )
    return _parse_wrk(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--illusts", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--direct-calls", type=int, default=2000)
    parser.add_argument(
        "--precompute-days",
        type=float,
        default=0.25,
        help="users active in this last window get a precomputed list; the rest are real-time",
    )
    parser.add_argument("--kv-url", default=None, help="default: the embedded file KV")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-ranker", action="store_true", help="measure without a ranker")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    wrk = _ensure_wrk()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["RECSYS_HOME"] = str(home)
        from tasks.core.db import get_engine
        from tasks.core.settings import load_settings
        from tasks.data.sources.generate import GeneratorConfig, generate_frames
        from tasks.serving.deploy import deploy_saved_model
        from tasks.serving.namespace import (
            key_id,
            seen_key,
            topn_prefix,
            user_vec_key,
            user_vec_prefix,
        )
        from tasks.serving.precompute import precompute_topn
        from tasks.serving.vectors import refresh_vectors
        from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
        from tests.doubles.mirror import write_mirror_frames

        settings = load_settings(home)
        if args.kv_url:
            settings = settings.replace(kv_url=args.kv_url)
        frames = generate_frames(
            GeneratorConfig(
                n_users=args.users,
                n_illusts=args.illusts,
                n_artists=max(args.illusts // 25, 10),
                days=14,
                seed=args.seed,
            )
        )
        write_mirror_frames(get_engine(settings.recsys_db_url), frames)
        model_dir = export_hash_two_tower(
            home / "export", HashModelSpec(dim=args.dim, buckets=4099)
        )
        deploy_saved_model(settings, 1, model_dir)
        ranker_dir = None
        if not args.no_ranker:
            from dataclasses import replace

            from tests.doubles.fixture_ranker import FIXTURE_RANKER_PARAMS, export_fixture_ranker

            began = time.perf_counter()
            params = replace(FIXTURE_RANKER_PARAMS, epochs=1, batch_size=1024)
            ranker_dir = export_fixture_ranker(home / "ranker_export", frames, params)
            deploy_saved_model(settings, 1, ranker_dir, model_name=settings.ranker_model_name)
            print(f"ranker trained and deployed in {time.perf_counter() - began:.1f}s", flush=True)
        refreshed = refresh_vectors(settings)
        pre = precompute_topn(settings, n=100, active_days=args.precompute_days)
        ns = refreshed.kv_namespace

        import uvicorn

        from api.app import create_app

        def serve(app: object) -> tuple[uvicorn.Server, threading.Thread, int]:
            port = _free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    app, host="127.0.0.1", port=port, log_level="warning", access_log=False
                )
            )
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            deadline = time.monotonic() + 60
            while not server.started:
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start in 60 s")
                time.sleep(0.1)
            return server, thread, port

        app = create_app(settings)
        server, thread, port = serve(app)
        plain_app = create_app(settings, ranking=False)
        plain_server, plain_thread, plain_port = serve(plain_app)
        state = app.state.serving
        kv, milvus = state.kv, state.milvus
        topn_users = sorted({key_id(k) for k in kv.scan_keys(topn_prefix(ns))})
        vec_users = {key_id(k) for k in kv.scan_keys(user_vec_prefix(ns))}
        realtime_users = sorted(vec_users - set(topn_users))
        if not realtime_users or not topn_users:
            raise RuntimeError(
                f"need both user kinds: {len(realtime_users)} real-time, {len(topn_users)} precomputed"
            )
        url = f"http://127.0.0.1:{port}"

        import httpx

        sample = httpx.get(f"{url}/recommend/{realtime_users[0]}", params={"k": args.k}).json()
        assert sample["source"] == "realtime" and not sample["degraded"], sample
        assert sample["ranked"] is (not args.no_ranker), sample
        plain_url = f"http://127.0.0.1:{plain_port}"
        plain = httpx.get(f"{plain_url}/recommend/{realtime_users[0]}", params={"k": args.k})
        assert plain.json()["ranked"] is False, plain.json()
        sample = httpx.get(f"{url}/recommend/{topn_users[0]}", params={"k": args.k}).json()
        assert sample["source"] == "precomputed", sample

        workdir = home / "wrk"
        workdir.mkdir()
        rt_paths = [f"/recommend/{u}?k={args.k}" for u in realtime_users]
        pc_paths = [f"/recommend/{u}?k={args.k}" for u in topn_users]
        from tasks.serving.ranking import RANK_POOL, build_pool
        from tasks.serving.recall import decode_ids, decode_vector

        pool_size = args.k if args.no_ranker else RANK_POOL
        # One ranker call's inputs per user, prepared outside the timed floor: 200 candidates
        # (the user's ANN list), built with the API's own feature source.
        rank_inputs: dict[int, dict[str, np.ndarray]] = {}
        if not args.no_ranker:
            features = state.ranking_features(state.namespace())
            for user in realtime_users[:200]:
                raw_vec, raw_seen = kv.mget([user_vec_key(ns, user), seen_key(ns, user)])
                seen = set(decode_ids(raw_seen))
                hits = milvus.search(
                    "items",
                    data=[np.asarray(decode_vector(raw_vec)).tolist()],
                    limit=RANK_POOL + len(seen),
                    anns_field="embedding",
                    output_fields=[],
                )
                ann = [(int(h["illust_id"]), float(h["distance"])) for h in hits[0]]
                pool = build_pool(user, [("ann", ann)], RANK_POOL, exclude=seen)
                rank_inputs[user] = features.inputs(pool)
        input_users = sorted(rank_inputs)
        ranker_ms: list[float] = []

        def direct(user: int) -> int:
            raw_vec, raw_seen = kv.mget([user_vec_key(ns, user), seen_key(ns, user)])
            vec = decode_vector(raw_vec)
            seen = decode_ids(raw_seen)
            hits = milvus.search(
                "items",
                data=[np.asarray(vec).tolist()],
                limit=pool_size + len(seen),
                anns_field="embedding",
                output_fields=[],
            )
            if rank_inputs:
                start = time.perf_counter()
                state.ranker.rank(rank_inputs[input_users[user % len(input_users)]])
                ranker_ms.append((time.perf_counter() - start) * 1000)
            return len(hits[0])

        latencies: list[float] = []
        direct_s = 0.0

        def run_direct(calls: int, offset: int) -> None:
            nonlocal direct_s
            start_all = time.perf_counter()
            for i in range(offset, offset + calls):
                start = time.perf_counter()
                direct(realtime_users[i % len(realtime_users)])
                latencies.append((time.perf_counter() - start) * 1000)
            direct_s += time.perf_counter() - start_all

        for user in realtime_users[:50]:  # warm-up
            direct(user)
        _run_wrk(wrk, url, rt_paths, 2, workdir)  # warm-up
        # Direct calls in two halves around the API run, so machine-load drift hits both.
        half = args.direct_calls // 2
        run_direct(half, 0)
        realtime = _run_wrk(wrk, url, rt_paths, args.duration, workdir)
        run_direct(args.direct_calls - half, half)
        _run_wrk(wrk, plain_url, rt_paths, 2, workdir)  # warm-up
        no_ranker = _run_wrk(wrk, plain_url, rt_paths, args.duration, workdir)
        precomputed = _run_wrk(wrk, url, pc_paths, args.duration, workdir)
        for srv, thr in ((server, thread), (plain_server, plain_thread)):
            srv.should_exit = True
            thr.join(timeout=30)

    lat = np.array(latencies)
    direct_stats = {
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "requests_per_s": round(args.direct_calls / direct_s, 1),
    }
    rank_lat = np.array(ranker_ms) if ranker_ms else np.zeros(1)
    print(
        json.dumps(
            {
                "bench": "api_latency",
                "ratio": round(realtime["p99_ms"] / direct_stats["p99_ms"], 3),
                "p50_ratio": round(realtime["p50_ms"] / direct_stats["p50_ms"], 3),
                "target": 1.5,
                "lower_is_better": True,
                "ranker": not args.no_ranker,
                "candidates": pool_size,
                "realtime_api": {k: round(v, 3) for k, v in realtime.items()},
                "realtime_api_no_ranker": {k: round(v, 3) for k, v in no_ranker.items()},
                "ranker_added_ms": {
                    "p50": round(realtime["p50_ms"] - no_ranker["p50_ms"], 3),
                    "p99": round(realtime["p99_ms"] - no_ranker["p99_ms"], 3),
                },
                "direct_ranker_call_ms": {
                    "p50": round(float(np.percentile(rank_lat, 50)), 3),
                    "p99": round(float(np.percentile(rank_lat, 99)), 3),
                },
                "precomputed_api": {k: round(v, 3) for k, v in precomputed.items()},
                "direct_kv_ann_rank": direct_stats,
                "k": args.k,
                "users_realtime": len(realtime_users),
                "users_precomputed": len(topn_users),
                "precomputed_users_written": pre.n_users,
                "illusts": refreshed.n_items,
                "dim": refreshed.dim,
                "kv": "redis" if args.kv_url else "file",
                "wrk": "-t1 -c1 --latency, loopback",
                "duration_s": args.duration,
            }
        )
    )


if __name__ == "__main__":
    main()
