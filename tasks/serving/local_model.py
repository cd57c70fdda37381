"""In-process model serving with the same interface as the TF-Serving REST client.

The embedded default for "model serving" (DESIGN.md): load a versioned SavedModel with
``tf.saved_model.load`` and call its named signatures (``item_tower``, ``user_tower``,
``score``, see docs/CONTRACTS.md). ``tasks.serving.tfserving.TFServingClient`` exposes the same
``predict(signature, inputs)`` so deploy checks, the vector refresh and the API work with
either. Also here:

* ``verify_model``: the checks run before a deployed version goes live (every signature
  answers, shapes agree, values are finite, scores are probabilities);
* ``sample_inputs``: a small contract-conforming request used by those checks and by the
  TF-Serving warmup file;
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.core.common import get_logger
from tasks.model.features import ITEM_INT_FEATURES

log = get_logger("serving")

SIGNATURES: tuple[str, ...] = ("item_tower", "user_tower", "score")


class ModelVerificationError(RuntimeError):
    """A deployed model version failed its pre-switch checks; the reason is in the message."""


class ModelClient(Protocol):
    """Anything that answers the contract signatures (in process or over REST)."""

    def predict(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``signature`` on a batch of raw features; returns named output arrays."""
        ...


class LocalModel:
    """A SavedModel loaded in this process, called through its named signatures."""

    def __init__(
        self,
        saved_model_dir: str | Path,
        *,
        version: int | None = None,
        signatures: tuple[str, ...] = SIGNATURES,
    ) -> None:
        """``signatures``: what the model must answer (the two-tower's by default; the
        ranker's is ``("rank",)``)."""
        import tensorflow as tf

        self.path = Path(saved_model_dir)
        self.version = version
        self.signatures = signatures
        if not (self.path / "saved_model.pb").exists():
            raise ModelVerificationError(f"no saved_model.pb under {self.path}")
        self._loaded = tf.saved_model.load(str(self.path))
        missing = [s for s in signatures if s not in self._loaded.signatures]
        if missing:
            raise ModelVerificationError(
                f"SavedModel {self.path} lacks signatures {missing}; "
                f"has {sorted(self._loaded.signatures)}"
            )
        log.info("loaded SavedModel %s (version %s)", self.path, version)

    def input_specs(self, signature: str) -> dict[str, Any]:
        """Input name -> ``tf.TensorSpec`` of one signature."""
        fn = self._loaded.signatures[signature]
        return dict(fn.structured_input_signature[1])

    def predict(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        if signature not in self._loaded.signatures:
            raise ValueError(f"unknown signature {signature!r}; expected one of {self.signatures}")
        specs = self.input_specs(signature)
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise ValueError(f"signature {signature!r} needs inputs {missing}")
        tensors = {
            name: tf.constant(np.asarray(inputs[name]), dtype=spec.dtype)
            for name, spec in specs.items()
        }
        outputs = self._loaded.signatures[signature](**tensors)
        return {name: value.numpy() for name, value in outputs.items()}


def sample_inputs(batch: int = 2, history_len: int = 4) -> dict[str, dict[str, np.ndarray]]:
    """A small valid request per signature: the verification probe and the warmup payload."""
    if batch < 1 or history_len < 1:
        raise ValueError(f"batch and history_len must be >= 1, got {batch}, {history_len}")
    ids = np.arange(1, batch + 1, dtype=np.int64)
    item = {name: ids * (i + 1) for i, name in enumerate(ITEM_INT_FEATURES)}
    item["tags"] = np.array(["original|girl"] * batch, dtype=object)
    history = np.zeros((batch, history_len), dtype=np.int64)
    history[:, 0] = ids
    user = {"user_id": ids, "history": history}
    return {"item_tower": item, "user_tower": user, "score": {**item, **user}}


def verify_model(client: ModelClient, *, batch: int = 2) -> int:
    """Call every signature on ``sample_inputs`` and check the answers; returns the dim D.

    Raises ``ModelVerificationError`` naming the failing signature and why.
    """
    probes = sample_inputs(batch)
    dims: dict[str, int] = {}
    for name in ("item_tower", "user_tower"):
        try:
            out = client.predict(name, probes[name])
        except Exception as exc:
            raise ModelVerificationError(f"signature {name!r} failed: {exc}") from exc
        emb = np.asarray(out.get("embedding"))
        if emb.ndim != 2 or emb.shape[0] != batch:
            raise ModelVerificationError(
                f"{name} embedding has shape {emb.shape}, expected ({batch}, D)"
            )
        if not np.all(np.isfinite(emb)):
            raise ModelVerificationError(f"{name} returned non-finite values")
        dims[name] = int(emb.shape[1])
    if dims["item_tower"] != dims["user_tower"]:
        raise ModelVerificationError(f"tower dims differ: {dims}")
    try:
        score = np.asarray(client.predict("score", probes["score"]).get("score"))
    except Exception as exc:
        raise ModelVerificationError(f"signature 'score' failed: {exc}") from exc
    if score.shape != (batch,) or not np.all(np.isfinite(score)):
        raise ModelVerificationError(f"score output {score!r} is not {batch} finite values")
    if np.any(score < 0) or np.any(score > 1):
        raise ModelVerificationError(f"score output {score.tolist()} is not a probability")
    return dims["item_tower"]
