"""STAND-IN for TF-Serving's REST API. Not TF-Serving; for tests and local runs only.

TF-Serving's binary cannot be installed on the development machines, yet the REST client
(``tasks.serving.tfserving``) and the deploy verification must be exercised over real HTTP. This
small server follows the documented REST surface closely enough for that:

* ``GET /v1/models/{name}`` and ``GET /v1/models/{name}/versions/{v}``: model status
  (``LOADING`` -> ``AVAILABLE``, or ``END`` with the load error);
* ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``signature_name`` and either the
  columnar ``inputs`` (answer ``outputs``) or the row ``instances`` (answer ``predictions``);
  single-output signatures drop the output name, as TF-Serving does.

Like TF-Serving with ``--model_config_file`` and a poll interval, a background thread
re-reads ``models.config`` (``specific`` versions) or, without one, serves the newest
numeric version directory under ``<base_path>/<name>/``, and loads SavedModels in process
with ``tasks.serving.local_model.LocalModel``. Several models can be served at once (one
``models.config`` holding the two-tower and the ranker): a model named in
``model_signatures`` must answer those signatures to load (the ranker: ``rank``), any other
the two-tower's. Production runs the real TF-Serving (infra/).

Run: ``python -m tests.doubles.tfserving_standin --base-path DIR --model-name NAME --port 8501``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.common import get_logger

log = get_logger("tfserving_standin")

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>:predict)?$"
)


def parse_model_config(text: str) -> dict[str, tuple[Path, list[int] | None]]:
    """Model name -> (base_path, specific versions or None for 'latest') from a config proto."""
    models: dict[str, tuple[Path, list[int] | None]] = {}
    for block in re.split(r"\bconfig\s*\{", text)[1:]:
        name = re.search(r'name:\s*"([^"]+)"', block)
        base = re.search(r'base_path:\s*"([^"]+)"', block)
        if not name or not base:
            continue
        versions = [int(v) for v in re.findall(r"versions:\s*(\d+)", block)]
        models[name.group(1)] = (Path(base.group(1)), versions if "specific" in block else None)
    return models


class StandInModelServer:
    """Watches a base path / models.config and serves the listed versions over HTTP."""

    def __init__(
        self,
        base_path: str | Path,
        model_name: str,
        *,
        config_file: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_s: float = 0.2,
        model_signatures: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.base_path = Path(base_path)
        self.model_name = model_name
        self.config_file = Path(config_file) if config_file else self.base_path / "models.config"
        self.poll_s = poll_s
        self.model_signatures = (
            {"ranker": ("rank",)} if model_signatures is None else dict(model_signatures)
        )
        self._models: dict[tuple[str, int], Any] = {}
        self._states: dict[tuple[str, int], tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- model watching -------------------------------------------------------------
    def wanted_versions(self) -> dict[str, tuple[Path, list[int]]]:
        """What the config (or the newest version dir) says should be served now."""
        if self.config_file.exists():
            config = parse_model_config(self.config_file.read_text())
        else:
            config = {self.model_name: (self.base_path / self.model_name, None)}
        wanted: dict[str, tuple[Path, list[int]]] = {}
        for name, (base, versions) in config.items():
            if versions is None:
                found = sorted(int(p.name) for p in base.glob("*") if p.name.isdigit())
                versions = found[-1:]
            wanted[name] = (base, versions)
        return wanted

    def sync_once(self) -> None:
        """Load newly wanted versions, unload versions no longer wanted."""
        from tasks.serving.local_model import LocalModel

        wanted = self.wanted_versions()
        keys = {(name, v) for name, (_, versions) in wanted.items() for v in versions}
        for name, (base, versions) in wanted.items():
            for version in versions:
                key = (name, version)
                if key in self._states and self._states[key][0] in ("AVAILABLE", "END"):
                    continue
                path = base / str(version)
                if not path.is_dir():
                    self._states[key] = ("START", "")
                    continue
                self._states[key] = ("LOADING", "")
                try:
                    required = self.model_signatures.get(name)
                    model = (
                        LocalModel(path, version=version, signatures=required)
                        if required
                        else LocalModel(path, version=version)
                    )
                except Exception as exc:  # a bad model must not kill the server
                    log.warning("stand-in: loading %s v%s failed: %s", name, version, exc)
                    self._states[key] = ("END", f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self._models[key] = model
                    self._states[key] = ("AVAILABLE", "")
        with self._lock:
            for key in list(self._states):
                if key not in keys:
                    self._models.pop(key, None)
                    self._states.pop(key, None)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as exc:  # keep watching; log why
                log.warning("stand-in sync failed: %s", exc)
            self._stop.wait(self.poll_s)

    # -- HTTP -------------------------------------------------------------------------
    def _status(self, name: str, version: int | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            entries = [
                {
                    "version": str(v),
                    "state": state,
                    "status": {
                        "error_code": "OK" if state != "END" else "UNKNOWN",
                        "error_message": err,
                    },
                }
                for (n, v), (state, err) in sorted(self._states.items())
                if n == name and (version is None or v == version)
            ]
        if not entries:
            what = f"version {version} of model {name}" if version else f"model {name}"
            return 404, {"error": f"Could not find {what}"}
        return 200, {"model_version_status": entries}

    def _predict(
        self, name: str, version: int | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            available = sorted(
                v for (n, v), (s, _) in self._states.items() if n == name and s == "AVAILABLE"
            )
            if version is None and available:
                version = available[-1]
            model = self._models.get((name, version)) if version is not None else None
        if model is None:
            return 404, {"error": f"Servable not found for request: Specific({name}, {version})"}
        signature = body.get("signature_name", "serving_default")
        if "inputs" in body:
            inputs = {k: np.asarray(v) for k, v in body["inputs"].items()}
            row_format = False
        elif "instances" in body:
            rows = body["instances"]
            if not rows or not isinstance(rows[0], dict):
                return 400, {"error": "instances must be a non-empty list of named-input objects"}
            inputs = {k: np.asarray([row[k] for row in rows]) for k in rows[0]}
            row_format = True
        else:
            return 400, {"error": "request must have 'inputs' or 'instances'"}
        try:
            outputs = model.predict(signature, inputs)
        except Exception as exc:
            return 400, {"error": f"{type(exc).__name__}: {exc}"}
        if row_format:
            n = len(next(iter(outputs.values())))
            if len(outputs) == 1:
                only = next(iter(outputs.values()))
                return 200, {"predictions": only.tolist()}
            return 200, {
                "predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]
            }
        if len(outputs) == 1:
            return 200, {"outputs": next(iter(outputs.values())).tolist()}
        return 200, {"outputs": {k: v.tolist() for k, v in outputs.items()}}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> re.Match[str] | None:
                return _PATH.match(self.path.split("?", 1)[0])

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                match = self._route()
                if not match or match["verb"]:
                    self._send(404, {"error": f"no route for GET {self.path}"})
                    return
                version = int(match["version"]) if match["version"] else None
                self._send(*server._status(match["name"], version))

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                match = self._route()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not match or not match["verb"]:
                    self._send(404, {"error": f"no route for POST {self.path}"})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError as exc:
                    self._send(400, {"error": f"JSON parse error: {exc}"})
                    return
                version = int(match["version"]) if match["version"] else None
                self._send(*server._predict(match["name"], version, body))

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("stand-in http: " + format, *args)

        return Handler

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> StandInModelServer:
        """Serve and watch in background threads; returns self (``url`` is ready)."""
        for target in (self.httpd.serve_forever, self._watch):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("TF-Serving stand-in on %s watching %s", self.url, self.base_path)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="TF-Serving REST stand-in (not TF-Serving)")
    parser.add_argument("--base-path", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-config-file", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    args = parser.parse_args(argv)
    server = StandInModelServer(
        args.base_path,
        args.model_name,
        config_file=args.model_config_file,
        host=args.host,
        port=args.port,
    )
    server.start()
    print(server.url, flush=True)
    try:
        server._stop.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
