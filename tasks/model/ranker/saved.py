"""The exported ranker as a served model: a probe request, its checks, and scoring a batch.

``sample_rank_inputs`` is a small valid ``rank`` request (every input of
:data:`~tasks.model.ranker.features.RANK_INPUTS`): the deploy verification probe and the
TF-Serving warmup payload. ``verify_ranker`` calls ``rank`` through anything with
``predict(signature, inputs)`` (the TF-Serving REST client, an in-process SavedModel) and
checks the answer is one probability per row. ``score_rank`` runs the signature of a loaded
SavedModel on raw features (the ranker gate's scorer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from tasks.model.features import ITEM_INT_FEATURES
from tasks.model.ranker.features import RECALL_CHANNELS, RecallEvidence
from tasks.model.ranker.model import SIGNATURE

SCORE_OUTPUT = "score"


class RankerVerificationError(RuntimeError):
    """The ranker's ``rank`` signature did not answer one probability per row."""


class SignatureClient(Protocol):
    """Anything that runs a named signature on raw inputs (REST client or local model)."""

    def predict(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``signature`` on a batch; returns named output arrays."""
        ...


def sample_rank_inputs(batch: int = 2, history_len: int = 4) -> dict[str, np.ndarray]:
    """A small valid ``rank`` request of ``batch`` rows (channel evidence on the first row)."""
    if batch < 1 or history_len < 1:
        raise ValueError(f"batch and history_len must be >= 1, got {batch}, {history_len}")
    ids = np.arange(1, batch + 1, dtype=np.int64)
    out: dict[str, np.ndarray] = {"user_id": ids}
    history = np.zeros((batch, history_len), dtype=np.int64)
    history[:, 0] = ids
    out["history"] = history
    out["user_bookmarks"] = ids * 3
    out["user_views"] = ids * 7
    out.update({name: ids * (i + 1) for i, name in enumerate(ITEM_INT_FEATURES)})
    out["tags"] = np.array(["original|girl"] * batch, dtype=object)
    out["artist_followed"] = (ids % 2).astype(np.int64)
    out["artist_history"] = ids - 1
    out["tag_overlap"] = ids % 3
    out["item_age_s"] = ids * 3600
    evidence = RecallEvidence.from_rows(
        [{RECALL_CHANNELS[0]: (0.5, 1)}] + [{} for _ in range(batch - 1)]
    )
    out.update(evidence.as_features())
    return out


def verify_ranker(client: SignatureClient, *, batch: int = 2) -> int:
    """Call ``rank`` on :func:`sample_rank_inputs` and check ``score`` is ``batch``
    probabilities; returns the number of channels the model takes (for the LIVE pointer).

    Raises :class:`RankerVerificationError` naming what was wrong.
    """
    try:
        out = client.predict(SIGNATURE, sample_rank_inputs(batch))
    except Exception as exc:
        raise RankerVerificationError(f"signature {SIGNATURE!r} failed: {exc}") from exc
    score = np.asarray(out.get(SCORE_OUTPUT))
    if score.shape != (batch,) or not np.all(np.isfinite(score)):
        raise RankerVerificationError(
            f"{SIGNATURE} output {SCORE_OUTPUT!r} is {score!r}, not {batch} finite values"
        )
    if np.any(score < 0) or np.any(score > 1):
        raise RankerVerificationError(f"{SIGNATURE} output {score.tolist()} is not a probability")
    return len(RECALL_CHANNELS)


def score_rank(loaded: Any, features: Mapping[str, np.ndarray], batch: int = 4096) -> np.ndarray:
    """float32[N]: the ``rank`` signature of a loaded SavedModel on raw features, batched."""
    from tasks.model.ranker.model import to_tensors

    fn = loaded.signatures[SIGNATURE]
    n = len(np.asarray(features["user_id"]))
    parts = []
    for start in range(0, n, batch):
        chunk = {k: np.asarray(v)[start : start + batch] for k, v in features.items()}
        parts.append(np.asarray(fn(**to_tensors(chunk))[SCORE_OUTPUT].numpy(), np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
