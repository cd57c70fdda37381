"""TF-Serving REST client: model status and ``:predict`` on named signatures.

Follows TF-Serving's documented REST API:

* ``GET /v1/models/{name}[/versions/{v}]`` -> ``{"model_version_status": [{"version", "state",
  "status": {"error_code", "error_message"}}]}``
* ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``signature_name`` and the columnar
  ``inputs`` format -> ``{"outputs": ...}``. When a signature has a single output TF-Serving
  drops its name and ``outputs`` is the bare value; ``predict`` restores the name.

Same ``predict(signature, inputs)`` interface as ``tasks.serving.local_model.LocalModel``. Standard
library HTTP (urllib) plus tenacity for the status poll, so it runs wherever the tasks do.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, NoReturn, cast

import numpy as np
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from tasks.core.common import get_logger

log = get_logger("tfserving")

# Output name of each single-output contract signature (see docs/CONTRACTS.md).
SINGLE_OUTPUT_NAMES: dict[str, str] = {
    "item_tower": "embedding",
    "user_tower": "embedding",
    "score": "score",
    "rank": "score",  # the ranker's signature (tasks.model.ranker.model.SIGNATURE)
}


class TFServingError(RuntimeError):
    """TF-Serving answered with an error or could not be reached.

    ``http_status`` is the HTTP status of an error answer (None when there was no answer).
    """

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ModelVersionEndedError(TFServingError):
    """A version reached state ``END`` (its load failed, or it was unloaded): waiting for it
    to become AVAILABLE cannot succeed. ``entry`` is its ``model_version_status`` entry."""

    def __init__(self, message: str, *, entry: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.entry = dict(entry)


def _worth_polling_again(exc: BaseException) -> bool:
    """Transport and HTTP errors (version not listed yet, server starting) are transient;
    an ended version is final, and anything that is not a ``TFServingError`` is a bug."""
    return isinstance(exc, TFServingError) and not isinstance(exc, ModelVersionEndedError)


def _not_available(entry: Mapping[str, Any] | None) -> bool:
    return entry is None or entry.get("state") != "AVAILABLE"


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
            raise TFServingError(f"{url}: HTTP {exc.code}: {detail}", http_status=exc.code) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TFServingError(f"{url}: {exc}") from exc

    def version_status(self, version: int | None = None) -> list[dict[str, Any]]:
        """The ``model_version_status`` entries for one version (or all loaded versions)."""
        return list(self._request(self._model_path(version)).get("model_version_status", []))

    def wait_available(
        self, version: int, *, timeout_s: float = 60.0, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll the status endpoint until ``version`` is AVAILABLE; raise on END or timeout.

        Decided on the status entry's ``state``: AVAILABLE returns the entry, END raises
        ``ModelVersionEndedError`` at once; not listed yet, any other state or a failed
        request (``TFServingError``) is polled again every ``poll_s`` until ``timeout_s``,
        then ``TFServingError`` names the last state or error seen.
        """
        last = "no answer yet"

        def poll() -> dict[str, Any] | None:
            nonlocal last
            try:
                entries = self.version_status(version)
            except TFServingError as exc:
                last = str(exc)
                raise
            entry = next((e for e in entries if str(e.get("version")) == str(version)), None)
            if entry is None:
                return None
            state = entry.get("state")
            last = f"state {state} {entry.get('status', {})}"
            if state == "END":
                raise ModelVersionEndedError(
                    f"{self.model_name} version {version} ended: {entry.get('status')}",
                    entry=entry,
                )
            return entry

        def give_up(_state: RetryCallState) -> NoReturn:
            raise TFServingError(
                f"{self.model_name} version {version} not AVAILABLE after {timeout_s}s ({last})"
            )

        retrying = Retrying(
            retry=retry_if_exception(_worth_polling_again) | retry_if_result(_not_available),
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(poll_s),
            retry_error_callback=give_up,
        )
        entry = cast(dict[str, Any], retrying(poll))  # only an AVAILABLE entry stops the loop
        log.info("TF-Serving %s version %s AVAILABLE", self.model_name, version)
        return entry

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
