"""What a person sees, in a real browser (headless Debian Chromium driven by Selenium).

One local UI stack (``scripts/ui.py up``: Airflow 3 api-server, scheduler, dag-processor,
triggerer on a private PostgreSQL database, the MLflow UI and the API) on a private
RECSYS_HOME with free ports and a small generated replica (one day: yesterday, UTC).
``ui.py`` unpauses ``recsys_extract_validate``, so the scheduler runs yesterday's interval;
then, as a person would: log in to the Airflow UI, trigger ``recsys_train`` from its form
with the defaults (the form's "unpause on trigger"), see the run succeed, open the
``train`` task's log, follow its MLflow run link, and check the run page (registered model
with its ``champion`` alias, the model-vs-baselines chart). The API's ``/docs`` too.

Screenshots are kept in ``var/test-artifacts/ui/`` (overwritten by the next run). Every
process the stack starts is stopped and the database dropped, also on failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "var" / "test-artifacts" / "ui"
EXTRACT, TRAIN = "recsys_extract_validate", "recsys_train"
REGISTERED_MODEL = "recsys4pix_two_tower"
# One day of a small site whose users stick to one taste (tag) and one artist more than to
# popularity, so that a 10-epoch two-tower (the form's defaults) beats MostPop on the holdout
# and the gate makes it champion.
REPLICA = (
    "n_users=300, n_illusts=300, n_artists=30, n_tags=15, days=1, views_per_user=60, "
    "tastes_per_user=1, favourite_artists_per_user=1, taste_view_share=0.9, "
    "taste_bookmark_rate=0.3, bookmark_rate=0.005, zipf_exponent=0.5, seed=3"
)
_SERVICE_VARS = (
    "RECSYS_REPLICA_URL", "RECSYS_DB_URL", "RECSYS_KV_URL", "RECSYS_MILVUS_URI",
    "RECSYS_TFSERVING_URL", "MLFLOW_TRACKING_URI", "RECSYS_MLFLOW_ARTIFACT_ROOT",
    "RECSYS_SERVING_BASE_PATH", "RECSYS_MLFLOW_UI_URL", "RECSYS_UI_UNPAUSE",
)  # fmt: skip


def _load_ui_module() -> Any:
    spec = importlib.util.spec_from_file_location("recsys_ui_script", REPO / "scripts" / "ui.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+): the stack binds it a minute
    later, and a port the kernel hands out (Milvus Lite, outgoing connections) may be taken
    by then."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float, logs: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    tails = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.log"))
    )
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tails}")


@dataclass
class Stack:
    """The running UI stack: its URLs, login and a REST client for the Airflow API."""

    airflow_url: str
    mlflow_url: str
    api_url: str
    password: str
    airflow_home: Path
    logs: Path
    _token: str = ""

    def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the Airflow REST API (``/api/v2``) with a JWT from ``/auth/token``."""
        if not self._token:
            self._token = self._post_json(
                "/auth/token", {"username": "admin", "password": self.password}
            )["access_token"]
        request = urllib.request.Request(
            f"{self.airflow_url}/api/v2{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.airflow_url}{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.rest("GET", f"/dags/{dag_id}/dagRuns?order_by=run_after")["dag_runs"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``scripts/ui.py up`` on a private home, ports and database; ``down`` + drop after."""
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/services.sh installs it)")
    ui = _load_ui_module()
    home = tmp_path_factory.mktemp("ui") / "recsys"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS}
    env.update(
        RECSYS_HOME=str(home),
        RECSYS_UI_AIRFLOW_PORT=str(_free_port()),
        RECSYS_UI_MLFLOW_PORT=str(_free_port()),
        RECSYS_UI_API_PORT=str(_free_port()),
        RECSYS_UI_PG_DB=f"recsys_airflow_t{uuid.uuid4().hex[:10]}",
        # extract runs yesterday's interval on its schedule; recsys_train stays paused until
        # the form's "unpause on trigger", so its asset event queues no second run
        RECSYS_UI_UNPAUSE=EXTRACT,
        RECSYS_UI_PARALLELISM="2",
        # what this test checks is the UI after a promotion (run note, MLflow links), not the
        # gate's strength: on its 300-user day ItemKNN can edge out the model (ties ~0.01)
        RECSYS_GATE_FLOOR="MostPop",
        PYTHONPATH=str(REPO),
    )
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    seed = (
        "from datetime import date; from tasks.data.sources.frames import write_business_frames; "
        "from tasks.data.sources.generate import GeneratorConfig, generate_frames; "
        "from tasks.core.settings import load_settings; "
        f"write_business_frames(generate_frames(GeneratorConfig({REPLICA}, "
        f"start_date=date.fromisoformat('{yesterday}'))), load_settings().replica_url)"
    )
    subprocess.run([sys.executable, "-c", seed], env=env, check=True, timeout=300)
    cfg_env = os.environ.copy()
    os.environ.update(env)
    try:
        cfg = ui.load_config()
    finally:
        os.environ.clear()
        os.environ.update(cfg_env)
    script = [sys.executable, str(REPO / "scripts" / "ui.py")]
    try:
        done = subprocess.run(
            [*script, "up"], env=env, capture_output=True, text=True, timeout=900, check=False
        )
        assert done.returncode == 0, (
            f"ui.py up failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
        password = json.loads(cfg.passwords_file.read_text())["admin"]
        yield Stack(
            cfg.airflow_url, cfg.mlflow_url, cfg.api_url, password, cfg.airflow_home, cfg.logs_dir
        )
    finally:
        subprocess.run([*script, "down"], env=env, timeout=120, check=False)
        with contextlib.suppress(Exception):
            ui.drop_database(cfg)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(
        options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _wait_text(driver: Any, text: str, timeout_s: float = 60) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s).until(
        lambda d: text in d.find_element(By.TAG_NAME, "body").text,
        message=f"page {driver.current_url} never showed {text!r}",
    )


def _finished_run(stack: Stack, dag_id: str, run_id: str | None, timeout_s: float) -> dict:
    def done() -> dict | None:
        runs = [r for r in stack.runs(dag_id) if run_id is None or r["dag_run_id"] == run_id]
        finished = [r for r in runs if r["state"] in ("success", "failed")]
        return finished[-1] if finished else None

    return _wait_for(f"a finished {dag_id} run", done, timeout_s, stack.logs)


def test_airflow_train_log_links_to_mlflow_run(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    started = time.monotonic()

    # The extract DAG was unpaused by ui.py: the scheduler runs yesterday's interval.
    extract = _finished_run(stack, EXTRACT, None, 600)
    assert extract["state"] == "success", extract

    # Log in (Airflow 3 simple auth manager; the password ui.py printed).
    browser.get(stack.airflow_url + "/")
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(stack.password)
    _shot(browser, "01-airflow-login")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: "/auth/login" not in d.current_url)

    # Trigger recsys_train from its form, every field left at its default.
    browser.get(f"{stack.airflow_url}/dags/{TRAIN}")
    wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))
    ).click()
    submit = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]"))
    )
    _wait_text(browser, "Interval start (UTC)")
    unpause = [
        box
        for box in browser.find_elements(By.CSS_SELECTOR, "[role=dialog] input[type=checkbox]")
        if "unpause" in (box.find_element(By.XPATH, "./ancestor::label[1]").text or "").lower()
    ]
    assert unpause, "the trigger form of a paused DAG offers no 'unpause on trigger'"
    if not unpause[0].is_selected():
        unpause[0].find_element(By.XPATH, "./ancestor::label[1]").click()
    _shot(browser, "02-train-trigger-form")
    before = {r["dag_run_id"] for r in stack.runs(TRAIN)}
    submit.click()
    run = _wait_for(
        "the run the form created",
        lambda: [r for r in stack.runs(TRAIN) if r["dag_run_id"] not in before],
        60,
        stack.logs,
    )[0]
    assert run["run_type"] == "manual", run
    assert run["conf"].get("interval_start") is None, run["conf"]
    # the form's "unpause on trigger" (checked by default) unpaused the DAG
    assert stack.rest("GET", f"/dags/{TRAIN}")["is_paused"] is False
    run = _finished_run(stack, TRAIN, run["dag_run_id"], 900)
    assert run["state"] == "success", run
    run_id = run["dag_run_id"]
    gate = stack.rest("GET", f"/dags/{TRAIN}/dagRuns/{run_id}/taskInstances/promotion_gate")
    assert gate["state"] == "success", gate
    # the gate's decision is the run's note (plugins/run_notes via the airflow_api Connection)
    assert (run.get("note") or "").startswith("PROMOTED v1"), run.get("note")

    browser.get(f"{stack.airflow_url}/dags/{TRAIN}/runs/{run_id}")
    _wait_text(browser, "publish_champion")
    _shot(browser, "03-train-run")

    # The train task's log, as the UI shows it; its MLflow run link.
    browser.get(f"{stack.airflow_url}/dags/{TRAIN}/runs/{run_id}/tasks/train")
    _wait_text(browser, "MLflow run", 90)
    _shot(browser, "04-train-task-log")
    body = browser.find_element(By.TAG_NAME, "body").text
    links = [
        a.get_attribute("href")
        for a in browser.find_elements(By.CSS_SELECTOR, "a[href]")
        if (a.get_attribute("href") or "").startswith(stack.mlflow_url)
    ]
    found = re.search(re.escape(stack.mlflow_url) + r"/#/experiments/\d+/runs/[0-9a-f]{32}", body)
    assert found, f"no MLflow run URL of {stack.mlflow_url} in the train log:\n{body[-3000:]}"
    mlflow_run_url = found.group(0)
    # the log viewer renders the URL as a link (new tab): follow it as a person would
    assert mlflow_run_url in links, f"the MLflow run URL is not a link in the log: {links}"
    handles = set(browser.window_handles)
    browser.find_element(By.CSS_SELECTOR, f'a[href="{mlflow_run_url}"]').click()
    WebDriverWait(browser, 10).until(lambda d: len(d.window_handles) > len(handles))
    browser.switch_to.window((set(browser.window_handles) - handles).pop())
    WebDriverWait(browser, 30).until(lambda d: d.current_url.startswith(stack.mlflow_url))
    assert browser.current_url.startswith(stack.mlflow_url), browser.current_url

    # The MLflow run page: the registered model version, then its page with the aliases.
    _wait_text(browser, REGISTERED_MODEL, 90)
    _shot(browser, "05-mlflow-run")
    version_link = wait.until(
        ec.element_to_be_clickable(
            (By.CSS_SELECTOR, f'a[href*="/models/{REGISTERED_MODEL}/versions/"]')
        )
    )
    version_link.click()
    _wait_text(browser, "Aliases", 90)
    _wait_text(browser, "champion", 30)
    _shot(browser, "06-mlflow-model-version")

    # The run's model-vs-baselines chart artifact.
    browser.get(mlflow_run_url + "/artifacts/model_vs_baselines.png")
    _wait_text(browser, "model_vs_baselines.png", 90)
    wait.until(
        lambda d: any(
            int(img.get_attribute("naturalWidth") or 0) > 300
            for img in d.find_elements(By.TAG_NAME, "img")
        )
    )
    _shot(browser, "07-mlflow-baseline-chart")

    print(f"browser flow: {time.monotonic() - started:.0f}s; screenshots in {ARTIFACTS}")


def test_api_docs_render_without_cdn(stack: Stack, browser: Any) -> None:
    """The API's Swagger UI shows the recommend endpoint (its assets served by the API)."""
    from selenium.webdriver.common.by import By

    browser.get(stack.api_url + "/docs")
    try:
        _wait_text(browser, "/recommend", 60)
    finally:
        _shot(browser, "08-api-docs")
    assert not [
        el.get_attribute("src") or el.get_attribute("href")
        for el in browser.find_elements(By.CSS_SELECTOR, "script[src], link[href]")
        if not (el.get_attribute("src") or el.get_attribute("href") or "").startswith(stack.api_url)
    ], "assets from outside the API"
