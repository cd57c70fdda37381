"""TF-Serving REST client: model status and ``:predict`` on named signatures.

Follows TF-Serving's documented REST API:

* ``GET /v1/models/{name}[/versions/{v}]`` -> ``{"model_version_status": [{"version", "state",
  "status": {"error_code", "error_message"}}]}``
* ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``signature_name`` and the columnar
  ``inputs`` format -> ``{"outputs": ...}``. When a signature has a single output TF-Serving
  drops its name and ``outputs`` is the bare value; ``predict`` restores the name.

Same ``predict(signature, inputs)`` interface as ``tasks.serving.local_model.LocalModel``. Standard
library only (urllib), so it runs wherever the tasks do.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np

from tasks.core.common import get_logger

log = get_logger("tfserving")

# Output name of each single-output contract signature (see docs/CONTRACTS.md).
SINGLE_OUTPUT_NAMES: dict[str, str] = {
    "item_tower": "embedding",
    "user_tower": "embedding",
    "score": "score",
}


class TFServingError(RuntimeError):
    """TF-Serving answered with an error or could not be reached."""


class TFServingClient:
    """REST client for one model (optionally pinned to one version)."""

    def __init__(
        self, base_url: str, model_name: str, *, version: int | None = None, timeout: float = 10.0
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"TF-Serving URL must be http(s)://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout

    def _model_path(self, version: int | None) -> str:
        path = f"{self.base_url}/v1/models/{self.model_name}"
        return path if version is None else f"{path}/versions/{int(version)}"

    def _request(self, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(
            url,
            data=data,
            headers={"Content-Type": "application/json"},
            method="POST" if data else "GET",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise TFServingError(f"{url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TFServingError(f"{url}: {exc}") from exc

    def version_status(self, version: int | None = None) -> list[dict[str, Any]]:
        """The ``model_version_status`` entries for one version (or all loaded versions)."""
        return list(self._request(self._model_path(version)).get("model_version_status", []))

    def wait_available(
        self, version: int, *, timeout_s: float = 60.0, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll the status endpoint until ``version`` is AVAILABLE; raise on END or timeout."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                for entry in self.version_status(version):
                    if str(entry.get("version")) != str(version):
                        continue
                    state = entry.get("state")
                    last = f"state {state} {entry.get('status', {})}"
                    if state == "AVAILABLE":
                        log.info("TF-Serving %s version %s AVAILABLE", self.model_name, version)
                        return entry
                    if state == "END":
                        raise TFServingError(
                            f"{self.model_name} version {version} ended: {entry.get('status')}"
                        )
            except TFServingError as exc:
                if "ended:" in str(exc):
                    raise
                last = str(exc)
            if time.monotonic() >= deadline:
                raise TFServingError(
                    f"{self.model_name} version {version} not AVAILABLE after {timeout_s}s ({last})"
                )
            time.sleep(poll_s)

    def predict(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``:predict`` with the columnar format; returns output name -> array."""
        body = {
            "signature_name": signature,
            "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()},
        }
        answer = self._request(self._model_path(self.version) + ":predict", body)
        if "error" in answer:
            raise TFServingError(f"predict {signature}: {answer['error']}")
        outputs = answer.get("outputs")
        if outputs is None:
            raise TFServingError(f"predict {signature}: no 'outputs' in answer {str(answer)[:200]}")
        if not isinstance(outputs, dict):
            name = SINGLE_OUTPUT_NAMES.get(signature, "output_0")
            outputs = {name: outputs}
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}
