"""Training knobs and their defaults: the one source for the stage, the DAG and the benches.

Cheap to import (standard library only): ``dags/recsys_train.py`` builds its ``Param``
defaults from ``TrainParams()`` at parse time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tasks.model.constants import HISTORY_LEN

if TYPE_CHECKING:
    from tasks.model.features import FeatureSpec

LOSSES = ("inbatch_softmax", "pointwise")


@dataclass(frozen=True)
class TrainParams:
    """Training knobs. ``loss`` is ``inbatch_softmax`` (logQ-corrected softmax over the
    batch's positives, the product default) or ``pointwise`` (BCE on the samples table, the
    write-up's choice)."""

    loss: Literal["inbatch_softmax", "pointwise"] = "inbatch_softmax"
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.005
    dim: int = 32
    # hidden / dropout: chosen on the validation split cut from train (the stage's own holdout,
    # never the test users) of the demo site, from (64, 0.1) 0.173, dim 16 0.183,
    # logq_weight 0.5 0.173, (32, 0.3) 0.197 HR@10 (MostPop 0.180); issue 11.
    hidden: int = 32
    dropout: float = 0.3
    l2: float = 0.0
    history_len: int = HISTORY_LEN
    hash_bins: int = 10_000
    patience: int = 2
    val_share: float = 0.1
    chunk_rows: int = 8192
    seed: int = 42
    logq_correction: bool = True
    logq_weight: float = 1.0  # alpha in logits - alpha * log Q (1: full correction)
    scale: float = 10.0  # initial logit scale (1 / temperature; trained from there)
    recency: bool = True  # learned per-position weights over the history
    history_items: bool = True  # history items encoded by the item tower (artist, tags, ...)
    feature_config: tuple[FeatureSpec, ...] | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("epochs", "batch_size", "dim", "history_len", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 < self.val_share < 0.5:
            raise ValueError(f"val_share must be in (0, 0.5), got {self.val_share!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")

    def features(self) -> list[FeatureSpec]:
        """The feature config: the custom one, else the default sized by ``dim``/``hash_bins``."""
        from tasks.model.features import default_feature_config

        if self.feature_config is not None:
            return list(self.feature_config)
        return default_feature_config(embedding_dim=self.dim, hash_bins=self.hash_bins)

    def as_mlflow_params(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "feature_config"}
        out["feature_config"] = "custom" if self.feature_config is not None else "default"
        return out

    def fingerprint(self) -> str:
        """Short hash of every knob: tags the MLflow run so a re-run can reuse it."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


TRAIN_DEFAULTS = TrainParams()
"""The defaults as an instance, for readers such as the DAG's ``Param`` declarations."""
