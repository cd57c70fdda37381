"""The whole pipeline on the production topology, driven the way an operator drives it.

Seed the primary → replication carries it to the ``read_only`` replica → trigger
``recsys_extract_validate`` through Airflow's REST API → the scheduler and the asset chain run
train → deploy → precompute on the two Celery workers → the multi-worker API serves the new
model version. Then a fault: a Celery worker SIGKILLed in the middle of training.

Expects a fresh stack (``make test-system`` starts from ``stack.py clean``): the first model must
beat MostPop at the promotion gate, and the tests share one data interval in this order.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tasks.data.sources.generate import DEMO_CONFIG
from tests.system.conftest import AirflowApi, Stack, wait_until

START = datetime.fromisoformat(f"{DEMO_CONFIG.start_date}T00:00:00+00:00")
END = START + timedelta(days=DEMO_CONFIG.days)
INTERVAL = {"interval_start": START.isoformat(), "interval_end": END.isoformat()}
CHAIN = ("recsys_extract_validate", "recsys_train", "recsys_deploy", "recsys_precompute")
TABLES = ("users", "illusts", "interactions", "follows")
RUN_TIMEOUT_S = 900
# the module fixture (seed → chain → API) runs inside the first test's limit
pytestmark = pytest.mark.timeout(1800)


def _counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar()) for t in TABLES
            }  # noqa: S608
    finally:
        engine.dispose()


def _next_run(
    api: AirflowApi, stack: Stack, dag_id: str, task_id: str, after: datetime, timeout_s: float
) -> dict[str, Any]:
    """The first run of ``dag_id`` queued after ``after`` in which ``task_id`` succeeded
    (scheduled runs with nothing new skip it and are passed over; a failed run fails)."""

    def find() -> dict[str, Any] | None:
        fresh = sorted(
            (r for r in api.runs(dag_id) if _ts(r["run_after"]) > after),
            key=lambda r: r["run_after"],
        )
        for run in fresh:
            if run["state"] not in ("success", "failed"):
                return None  # wait for the oldest unfinished run first
            states = {
                t["task_id"]: t["state"] for t in api.task_instances(dag_id, run["dag_run_id"])
            }
            if run["state"] == "failed":
                pytest.fail(_failure_report(api, dag_id, run["dag_run_id"]))
            if states.get(task_id) == "success":
                return run
        return None

    return dict(
        wait_until(find, timeout_s, f"a run of {dag_id} after {after} running {task_id}", 5)
    )


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _started(api: AirflowApi, dag_id: str, run_id: str) -> datetime:
    response = api.get(f"/dags/{dag_id}/dagRuns/{run_id}")
    response.raise_for_status()
    return _ts(response.json()["start_date"])


def _train_run_for(api: AirflowApi, after: datetime, start: datetime) -> dict[str, Any]:
    """The asset-triggered ``recsys_train`` run (queued after ``after``) whose ``intervals``
    task chose the interval starting at ``start``."""

    def find() -> dict[str, Any] | None:
        for run in sorted(api.runs("recsys_train"), key=lambda r: r["run_after"]):
            if datetime.fromisoformat(run["run_after"].replace("Z", "+00:00")) <= after:
                continue
            states = {
                t["task_id"]: t["state"]
                for t in api.task_instances("recsys_train", run["dag_run_id"])
            }
            if states.get("intervals") != "success":
                continue
            chosen = _xcom(api, "recsys_train", run["dag_run_id"], "intervals")
            if any(str(i["start"]).startswith(start.date().isoformat()) for i in chosen):
                return run
        return None

    return dict(wait_until(find, RUN_TIMEOUT_S, f"the recsys_train run of {start.date()}", 5))


def _xcom(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> Any:
    response = api.get(
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        params={"deserialize": True},
    )
    response.raise_for_status()
    return response.json()["value"]


def _failure_report(api: AirflowApi, dag_id: str, run_id: str) -> str:
    lines = [f"{dag_id} {run_id}:"]
    for ti in api.task_instances(dag_id, run_id):
        lines.append(f"  {ti['task_id']}: {ti['state']} on {ti.get('hostname')}")
    return "\n".join(lines)


def _wait_success(api: AirflowApi, stack: Stack, dag_id: str, run_id: str) -> None:
    state = api.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
    if state != "success":
        pytest.fail(
            f"{_failure_report(api, dag_id, run_id)}\n--- scheduler log\n"
            f"{stack.log('airflow-scheduler', 3000)}"
        )


@pytest.fixture(scope="module")
def pipeline(stack: Stack, airflow_api: AirflowApi, primary: sa.Engine) -> dict[str, Any]:
    """Seed, replicate, trigger; wait for the whole asset chain. What each stage produced."""
    seeded = stack.run(
        [
            sys.executable, "-m", "tasks.data.sources.cli", "generate",
            "--users", str(DEMO_CONFIG.n_users), "--illusts", str(DEMO_CONFIG.n_illusts),
            "--artists", str(DEMO_CONFIG.n_artists), "--days", str(DEMO_CONFIG.days),
            "--start-date", str(DEMO_CONFIG.start_date), "--seed", str(DEMO_CONFIG.seed),
            "--replica-url", stack.env["RECSYS_STACK_PRIMARY_URL"],
        ]
    )  # fmt: skip
    on_primary = _counts(stack.env["RECSYS_STACK_PRIMARY_URL"])
    assert on_primary["interactions"] > 1000, (on_primary, seeded.stdout)
    # replication carries the seed to the read_only replica (read with the pipeline's account)
    wait_until(
        lambda: _counts(stack.env["RECSYS_STACK_REPLICA_URL"]) == on_primary,
        120,
        f"the replica to hold the primary's rows {on_primary}",
    )
    before = _version(stack.env["RECSYS_STACK_API_URL"])
    triggered_at = datetime.now(UTC)
    extract_run = airflow_api.trigger("recsys_extract_validate", INTERVAL)
    for dag_id in CHAIN:
        airflow_api.unpause(dag_id)
    _wait_success(airflow_api, stack, "recsys_extract_validate", extract_run)
    runs = {"recsys_extract_validate": extract_run}
    # Unpausing the daily DAG also schedules its latest interval (yesterday, no rows here):
    # its asset event starts a train run of its own. Ours is the one sampling our interval.
    train = _train_run_for(airflow_api, triggered_at, START)
    _wait_success(airflow_api, stack, "recsys_train", train["dag_run_id"])
    runs["recsys_train"] = train["dag_run_id"]
    previous = _started(airflow_api, "recsys_train", train["dag_run_id"])
    for dag_id, task_id in (("recsys_deploy", "deploy"), ("recsys_precompute", "precompute")):
        run = _next_run(airflow_api, stack, dag_id, task_id, previous, RUN_TIMEOUT_S)
        runs[dag_id] = run["dag_run_id"]
        previous = _started(airflow_api, dag_id, run["dag_run_id"])
    gate = _xcom(airflow_api, "recsys_train", runs["recsys_train"], "promotion_gate")
    return {"runs": runs, "gate": gate, "before": before, "counts": on_primary}


def test_chain_runs_on_the_celery_workers(
    pipeline: dict[str, Any], airflow_api: AirflowApi
) -> None:
    hosts: dict[str, str] = {}
    for dag_id, run_id in pipeline["runs"].items():
        for ti in airflow_api.task_instances(dag_id, run_id):
            if ti["state"] == "success":
                hosts[f"{dag_id}.{ti['task_id']}"] = ti["hostname"]
    assert {"recsys_train.train", "recsys_deploy.deploy", "recsys_precompute.precompute"} <= set(
        hosts
    ), hosts
    workers = {host.split("@")[0] for host in hosts.values()}
    # every task ran on one of the stack's two Celery workers (their hostname_callable)
    assert workers <= {"stack-worker-1", "stack-worker-2"}, hosts
    assert workers, hosts
    print(f"task hosts: {sorted(workers)} ({len(hosts)} task instances)")


def _version(api: str) -> dict[str, Any]:
    return dict(httpx.get(f"{api}/version", timeout=30).json())


def test_api_serves_the_new_model(pipeline: dict[str, Any], stack: Stack) -> None:
    gate = pipeline["gate"]
    assert gate["promoted"] is True, f"the first model was not promoted: {gate}"
    version = int(gate["version"])
    api = stack.env["RECSYS_STACK_API_URL"]
    assert pipeline["before"].get("vectors_model_version") != version
    # Live, with no restart: both uvicorn workers follow the KV namespace switch of the
    # refresh (requests land on either; six reads see both with near certainty).
    wait_until(
        lambda: {_version(api).get("vectors_model_version") for _ in range(6)} == {version},
        180,
        f"the API to read the namespace of model version {version}",
    )
    user_id = _top_user(stack)
    answer = httpx.get(f"{api}/recommend/{user_id}", params={"k": 10}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["items"]) == 10, body
    assert body["source"] == "precomputed", body  # precompute's lists, the new namespace
    assert body["namespace"] == _version(api)["kv_namespace"], body
    # No restart either for the user tower: both workers follow the two-tower's LIVE pointer.
    wait_until(
        lambda: {_version(api).get("model_version") for _ in range(6)} == {version},
        60,
        f"the API's workers to load model version {version}",
    )
    health = httpx.get(f"{api}/healthz", timeout=30)
    assert health.status_code == 200, health.text
    unknown = httpx.get(f"{api}/recommend/{10**9}", params={"k": 5}, timeout=30)
    assert unknown.status_code == 200, unknown.text


def _top_user(stack: Stack) -> int:
    engine = sa.create_engine(stack.env["RECSYS_STACK_PRIMARY_URL"])
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT user_id FROM interactions GROUP BY user_id "
                        "ORDER BY COUNT(*) DESC LIMIT 1"
                    )
                ).scalar()
            )
    finally:
        engine.dispose()


def _model_versions(stack: Stack, airflow_run_id: str) -> list[Any]:
    import mlflow

    settings = stack.settings()
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    return [
        v
        for v in client.search_model_versions(f"name = '{settings.registered_model_name}'")
        if v.tags.get("airflow.run_id") == airflow_run_id
    ]


def test_worker_killed_during_training(stack: Stack, airflow_api: AirflowApi) -> None:
    """SIGKILL the worker running ``train``: the try fails (heartbeat timeout) and is retried
    by itself (``retries=1``: try 2 on a live worker), the retry completes and one model
    version results. Runs after the pipeline test (same module, file order): our interval is
    validated."""
    run_id = airflow_api.trigger("recsys_train", INTERVAL | {"epochs": 4, "promote": False})

    def training() -> dict[str, Any] | None:
        ti = next(
            (
                t
                for t in airflow_api.task_instances("recsys_train", run_id)
                if t["task_id"] == "train"
            ),
            None,
        )
        return ti if ti and ti["state"] == "running" and ti.get("hostname") else None

    ti = wait_until(training, RUN_TIMEOUT_S, "the train task to run")
    worker = "airflow-" + ti["hostname"].split("@")[0].removeprefix("stack-")
    assert worker in ("airflow-worker-1", "airflow-worker-2"), ti
    wait_until(
        lambda: re.search(r"epoch \d+ step", _task_log(airflow_api, run_id, ti["try_number"])),
        300,
        "training to start its epochs",
        every_s=3,
    )
    stack.kill(worker)
    try:
        # the lost try is failed by heartbeat timeout; with retries left it goes
        # up_for_retry, then (10 s later) try 2 is scheduled: either shows the retry
        lost = wait_until(
            lambda: (
                (t := _train_ti(airflow_api, run_id))
                and (t["state"] in ("failed", "up_for_retry") or t["try_number"] > 1)
                and t
            ),
            RUN_TIMEOUT_S,
            "the scheduler to fail the lost try",
            every_s=3,
        )
    finally:
        stack.start(worker)
    assert lost["state"] != "failed", f"train's lost try was not retried: {lost}"
    assert _model_versions(stack, run_id) == []  # register runs only after train succeeds
    _wait_success(airflow_api, stack, "recsys_train", run_id)
    tries = sorted(
        airflow_api.tries("recsys_train", run_id, "train"), key=lambda t: t["try_number"]
    )
    summary = [(t["try_number"], t["state"], t.get("hostname")) for t in tries]
    assert [t["try_number"] for t in tries] == [1, 2], summary  # an automatic retry, no clear
    assert (tries[0]["state"], tries[1]["state"]) == ("failed", "success"), summary
    versions = _model_versions(stack, run_id)
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]


def _train_ti(api: AirflowApi, run_id: str) -> dict[str, Any] | None:
    return next(
        (t for t in api.task_instances("recsys_train", run_id) if t["task_id"] == "train"), None
    )


def _task_log(api: AirflowApi, run_id: str, try_number: int) -> str:
    """The try's log as text (the JSON body's events, stringified: enough to search)."""
    response = api.get(
        f"/dags/recsys_train/dagRuns/{run_id}/taskInstances/train/logs/{try_number}",
        params={"full_content": True},
    )
    return str(response.json().get("content")) if response.status_code == 200 else ""
