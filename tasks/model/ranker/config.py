"""The ranker's knobs and their defaults, in one frozen dataclass (standard library only)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tasks.model.constants import HISTORY_LEN

SHOWN_ROWS: tuple[str, ...] = ("auto", "yes", "no")


@dataclass(frozen=True)
class RankerParams:
    """Training and architecture knobs of the DCN-V2 ranker.

    ``cross_layers`` FeatureCross layers (low-rank when ``projection_dim`` is set) run in
    parallel with a deep MLP of ``deep_layers`` units; both read the same embedded input.
    Training rows (``tasks.model.ranker.stage``): candidate sets built like the API's pool
    (``candidate_tiers`` cutoffs per user below the gate's holdout, pools of
    ``candidate_pool``, ``candidate_negatives`` label-0 rows kept per set) and/or the
    interval's shown rows plus sampled negatives; ``shown_rows`` ``"auto"`` fits both variants
    and keeps the one with the better validation NDCG@10, ``"yes"``/``"no"`` forces one.
    Default ``"no"``: "auto" picked it on ML-100K (validation NDCG@10 0.2601 vs 0.2574 with
    the shown rows) and on the demo site (0.3322 vs 0.3263), at half the training time.
    ``id_features``: learn per-id embeddings (``user_id``, ``illust_id`` and the bookmark
    history over it); off, the ranker sees only attributes, counts, cross features and recall
    evidence. The ``rank`` signature is the same either way. Default on: off won on the
    stage's validation sets on both data sets, but through the product (bench/
    pipeline_quality.py, 2026-12-02, still with ``append_missed=True``) it served worse on
    ML-100K (HR@10 0.140 vs 0.158 with ids; round-robin 0.142) and only tied on the demo
    site (0.136 vs round-robin 0.139, NDCG@10 0.068 vs 0.065); on the gate's ML-100K
    holdout it also trails with ``append_missed=False`` (0.104 vs 0.113).
    ``append_missed``: a training set whose positive recall missed gets it appended (with its
    real evidence); off (default), that set keeps its negatives only, so the positives are the
    ones serving can rank. Off scored higher on both data sets, on the stage's validation sets
    and on the gate's holdout sets (mean over seeds, 2026-12-02: demo site holdout NDCG@10
    0.122 vs 0.095 with appending, recall order 0.095; ML-100K 0.113 vs 0.096, recall order
    0.080).
    ``val_share``: with candidate sets, that share of users (seeded) is validation; without
    (no channels given), the latest share of rows by request time.
    """

    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 0.003
    dim: int = 16
    id_features: bool = True
    hash_bins: int = 10_000
    history_len: int = HISTORY_LEN
    tag_history_len: int = 50
    cross_layers: int = 2
    projection_dim: int | None = None
    diag_scale: float = 0.0
    deep_layers: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    l2: float = 0.0
    val_share: float = 0.2
    candidate_tiers: int = 3
    candidate_pool: int = 200
    candidate_negatives: int = 50
    append_missed: bool = False
    shown_rows: str = "no"
    patience: int = 2
    seed: int = 42
    ks: tuple[int, ...] = (10,)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "dim", "history_len", "tag_history_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("candidate_tiers", "candidate_pool", "candidate_negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.shown_rows not in SHOWN_ROWS:
            raise ValueError(f"shown_rows must be one of {SHOWN_ROWS}, got {self.shown_rows!r}")
        if self.cross_layers < 0:
            raise ValueError(f"cross_layers must be >= 0, got {self.cross_layers!r}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim must be None or >= 1, got {self.projection_dim!r}")
        if self.diag_scale < 0:
            raise ValueError(f"diag_scale must be >= 0, got {self.diag_scale!r}")
        if any(u < 1 for u in self.deep_layers):
            raise ValueError(f"deep_layers must be positive, got {self.deep_layers!r}")
        if not 0.0 < self.val_share < 0.5:
            raise ValueError(f"val_share must be in (0, 0.5), got {self.val_share!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def as_mlflow_params(self) -> dict[str, Any]:
        return {
            k: (",".join(map(str, v)) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    def fingerprint(self) -> str:
        """Short hash of every knob (tags the MLflow run)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(("ranker" + text).encode()).hexdigest()[:16]


RANKER_DEFAULTS = RankerParams()
