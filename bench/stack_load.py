"""Bench: wrk at a fixed rate against the multi-worker API of the production topology.

Needs the stack up with a model deployed (``make stack`` and a pipeline run, e.g. after
``make test-system`` with ``KEEP_STACK=1``, or the system test's state). Takes user ids that
have interactions and illust ids from the primary's business DB and loads
``GET /recommend/{user}?k=10`` and ``GET /similar/{illust}?k=10`` (2:1) on the stack's API
(uvicorn, 2 workers; ``RECSYS_STACK_API_PORT``, default 8010).

Fixed rate: Debian packages wrk 4 (``apt-get install wrk``, scripts/services.sh), which has
no ``-R`` (that is wrk2, not packaged). The Lua script's ``delay()`` makes each of the ``c``
connections wait ``1000*c/rate`` ms between its requests, so the offered rate is ``rate``
minus the latency's share (``rate * gap / (gap + latency)``): the JSON line reports both the
target and the achieved requests/s. wrk's latencies are per request (the wait excluded).
Requirement: zero non-2xx responses and zero socket errors (exit 1 otherwise).

    .venv/bin/python bench/stack_load.py [--duration 60] [--rate 50] [--connections 10]

Last stdout line: one JSON object (p50/p99 ms, requests/s, non-2xx, errors).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, float]:
    """p50/p99 (ms), requests/s, requests, non-2xx and socket errors of ``wrk --latency``."""
    out: dict[str, float] = {}
    for pct in ("50", "99"):
        match = re.search(rf"^\s*{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            raise RuntimeError(f"no {pct}% latency in wrk output:\n{output}")
        out[f"p{pct}_ms"] = round(float(match.group(1)) * _UNITS[match.group(2)], 3)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rps:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    out["requests_per_s"] = float(rps.group(1))
    total = re.search(r"(\d+) requests in", output)
    out["requests"] = float(total.group(1)) if total else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    out["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    out["socket_errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    return out


def lua_script(paths: list[str], delay_ms: float) -> str:
    """wrk script: cycle through ``paths``; each connection waits ``delay_ms`` between requests."""
    if not paths:
        raise ValueError("no request paths to load")
    listed = ", ".join(json.dumps(p) for p in paths)
    return (
        f"paths = {{{listed}}}\ni = 0\n"
        "request = function()\n  i = i + 1\n"
        '  return wrk.format("GET", paths[(i % #paths) + 1])\nend\n'
        f"delay = function()\n  return {delay_ms:.3f}\nend\n"
    )


def _ids(primary_url: str, users: int, illusts: int) -> tuple[list[int], list[int]]:
    import sqlalchemy as sa

    engine = sa.create_engine(primary_url)
    try:
        with engine.connect() as conn:
            user_ids = [
                int(r[0])
                for r in conn.execute(
                    sa.text(
                        "SELECT user_id FROM interactions GROUP BY user_id "
                        "ORDER BY COUNT(*) DESC LIMIT :n"
                    ),
                    {"n": users},
                )
            ]
            illust_ids = [
                int(r[0])
                for r in conn.execute(
                    sa.text(
                        "SELECT illust_id FROM interactions GROUP BY illust_id "
                        "ORDER BY COUNT(*) DESC LIMIT :n"
                    ),
                    {"n": illusts},
                )
            ]
    finally:
        engine.dispose()
    if not user_ids or not illust_ids:
        raise RuntimeError(f"no interactions on the primary ({primary_url}): seed the stack first")
    return user_ids, illust_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--rate", type=float, default=50.0, help="target requests/s (all)")
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.connections < 1 or args.duration < 1:
        raise SystemExit(
            f"bad --rate/--connections/--duration: {args.rate}/{args.connections}/{args.duration}"
        )
    import httpx
    import stack

    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not installed: run scripts/services.sh (apt-get install wrk)")
    cfg = stack.load_config()
    env = stack.client_env(cfg)
    api = env["RECSYS_STACK_API_URL"]
    version = httpx.get(f"{api}/version", timeout=30).json()
    if version.get("model_version") is None:
        raise SystemExit(f"the stack's API serves no model yet ({version}): run the pipeline")
    user_ids, illust_ids = _ids(env["RECSYS_STACK_PRIMARY_URL"], 200, 100)
    paths = []
    for i, user in enumerate(user_ids):
        paths.append(f"/recommend/{user}?k=10")
        if i % 2:
            paths.append(f"/similar/{illust_ids[(i // 2) % len(illust_ids)]}?k=10")
    delay_ms = 1000.0 * args.connections / args.rate
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "stack_load.lua"
        script.write_text(lua_script(paths, delay_ms))
        # warm-up (both uvicorn workers load the model and open their clients)
        subprocess.run(
            [wrk, "-t1", f"-c{args.connections}", "-d5s", "-s", str(script), api],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        done = subprocess.run(
            [wrk, "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
             "--timeout", "10s", "-s", str(script), api],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    print(done.stdout)
    result = parse_wrk(done.stdout)
    ok = result["non_2xx"] == 0 and result["socket_errors"] == 0 and result["requests"] > 0
    print(
        json.dumps(
            {
                "bench": "stack_load",
                "target_rps": args.rate,
                "connections": args.connections,
                "duration_s": args.duration,
                "api_workers": 2,
                "model_version": version["model_version"],
                **result,
                "ok": ok,
                "wrk": "wrk 4 (Debian), fixed rate via Lua delay(), loopback",
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
