"""The main job end to end on embedded defaults: data → DAGs → API answer → summary.

Runs the real DAG files with ``dag.test()`` (real Airflow metadata DB on SQLite, no
scheduler), in the order the assets would chain them in production:
generate synthetic replica → recsys_extract_validate → recsys_train → recsys_deploy →
recsys_precompute → the online API answering a few users. Each DAG's full Airflow log goes
to ``var/demo-logs/<dag>.log``; this script prints what each stage produced.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _output_to(path: Path) -> AbstractContextManager[None]:
    """Send fd 1 and 2 to ``path`` for a while (the harness's ``fds_to``)."""
    from tests.doubles.dagrun import fds_to

    return fds_to(path)


def _say(message: str) -> None:
    print(message, flush=True)


def _run(dag_id: str, log_dir: Path, **kwargs):  # type: ignore[no-untyped-def]
    from tests.doubles.dagrun import run_dag

    log_path = log_dir / f"{dag_id}.log"
    started = time.monotonic()
    _say(f"… {dag_id} (log: {log_path.relative_to(ROOT)})")
    with _output_to(log_path):
        outcome = run_dag(dag_id, **kwargs)
    took = time.monotonic() - started
    states = ", ".join(f"{t}={s}" for t, s in sorted(outcome.task_states.items()))
    _say(f"  {outcome.state} in {took:.0f}s [{states}]")
    if not outcome.ok:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        _say("\n".join("  | " + line for line in tail))
        raise SystemExit(f"{dag_id} failed ({outcome.failed_tasks()}); full log: {log_path}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    from tasks.data.sources.generate import DEMO_CONFIG as DEMO

    parser.add_argument("--users", type=int, default=DEMO.n_users)
    parser.add_argument("--illusts", type=int, default=DEMO.n_illusts)
    parser.add_argument("--artists", type=int, default=DEMO.n_artists)
    parser.add_argument("--days", type=int, default=DEMO.days)
    parser.add_argument("--start-date", default=str(DEMO.start_date))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=DEMO.seed)
    args = parser.parse_args(argv)

    from tasks.core.settings import load_settings
    from tasks.data.sources.frames import write_business_frames
    from tasks.data.sources.generate import generate_frames

    settings = load_settings()
    log_dir = settings.home / "demo-logs"
    started = time.monotonic()
    _say(f"recsys4pix demo — embedded defaults under {settings.home}")

    start = date.fromisoformat(args.start_date)
    config = dataclasses.replace(
        DEMO,
        n_users=args.users,
        n_illusts=args.illusts,
        n_artists=args.artists,
        days=args.days,
        start_date=start,
        seed=args.seed,
    )
    _say(
        f"… generating a synthetic Pixiv-style replica ({args.users} users, {args.illusts} illusts, {args.days} days)"
    )
    counts = write_business_frames(generate_frames(config), settings.replica_url)
    _say(f"  replica {settings.replica_url}: {counts}")

    interval_start = datetime(start.year, start.month, start.day)
    interval_end = interval_start + timedelta(days=args.days)
    span = {
        "interval_start": interval_start.isoformat() + "+00:00",
        "interval_end": interval_end.isoformat() + "+00:00",
    }

    extract = _run("recsys_extract_validate", log_dir, conf=span)
    train = _run("recsys_train", log_dir, conf=span | {"epochs": args.epochs})
    deploy = _run("recsys_deploy", log_dir, conf={"force": True})
    precompute = _run("recsys_precompute", log_dir)

    from fastapi.testclient import TestClient

    from api.app import create_app

    _say("… asking the online API")
    with TestClient(create_app(settings)) as client:
        version = client.get("/version").json()
        users = _sample_users(settings, 3)
        answers = {uid: client.get(f"/recommend/{uid}", params={"k": 5}).json() for uid in users}

    trained = train.xcoms.get("train") or {}
    gate = train.xcoms.get("promotion_gate") or {}
    refreshed = deploy.xcoms.get("refresh_vectors") or {}
    _say("")
    _say("=" * 72)
    _say("recsys4pix: what the run produced")
    _say("=" * 72)
    _say(f"extract+validate : {extract.xcoms.get('extract', {}).get('extract')}")
    _say(f"validation       : {extract.xcoms.get('validate')}")
    _say(f"samples          : {train.xcoms.get('build_samples', {}).get('runs')}")
    _say(f"MLflow run       : {trained.get('run_name')}  {trained.get('run_url')}")
    _say(f"metrics          : {trained.get('metrics')}")
    _say(f"model version    : v{train.xcoms.get('register')}  gate: {gate.get('reason')}")
    _say(f"deployed         : {deploy.xcoms.get('deploy')}")
    _say(f"vectors          : {refreshed}")
    _say(f"precomputed      : {precompute.xcoms.get('precompute')}")
    _say(f"API /version     : {version}")
    for uid, answer in answers.items():
        items = answer.get("items", [])[:5]
        shown = ", ".join(f"{i['illust_id']}({i['channel']})" for i in items)
        _say(f"recommend user {uid}: {shown}  [source: {answer.get('source')}]")
    _say("")
    _say(f"done in {time.monotonic() - started:.0f}s. Look at it yourself:")
    _say(
        "  Airflow UI : source scripts/env.sh && AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True"
        " .venv/bin/airflow api-server --host 127.0.0.1 --port 8080   # these runs and their task logs"
    )
    _say(
        f"  MLflow UI  : .venv/bin/mlflow ui --host 127.0.0.1 --backend-store-uri {settings.mlflow_tracking_uri}"
        "   # http://127.0.0.1:5000"
    )
    _say("  Live stack : make ui   # scheduler + workers on PostgreSQL, MLflow UI, API (README)")
    _say(
        "  API        : source scripts/env.sh && .venv/bin/uvicorn api.app:create_app --factory --host 127.0.0.1 --port 8000"
        "   # curl localhost:8000/recommend/1?k=10"
    )
    return 0


def _sample_users(settings, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """A few users with bookmarks, so their answers show the personal channels."""
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.schema import mirror_interactions as mi

    with get_engine(settings.recsys_db_url).connect() as conn:
        rows = conn.execute(
            sa.select(mi.c.user_id)
            .where(mi.c.label == 1)
            .group_by(mi.c.user_id)
            .order_by(sa.func.count().desc(), mi.c.user_id)
            .limit(n)
        )
        return [int(r[0]) for r in rows]


if __name__ == "__main__":
    raise SystemExit(main())
