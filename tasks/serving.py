"""In-process model serving with the same interface as the TF-Serving REST client.

The embedded default for "model serving" (DESIGN.md): load a versioned SavedModel with
``tf.saved_model.load`` and call its named signatures (``item_tower``, ``user_tower``,
``score``, see docs/CONTRACTS.md). ``tasks.tfserving.TFServingClient`` exposes the same
``predict(signature, inputs)`` so deploy checks, the vector refresh and the API work with
either. Also here:

* ``verify_model``: the checks run before a deployed version goes live (every signature
  answers, shapes agree, values are finite, scores are probabilities);
* ``sample_inputs``: a small contract-conforming request used by those checks and by the
  TF-Serving warmup file;
* ``export_hash_two_tower``: a deterministic *fixture* model with exactly the contract
  signatures (embeddings looked up from fixed random tables by hashed ids). Tests and
  benches use it so serving is testable without a trained model; it is not a recommender.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.common import get_logger
from tasks.features import ITEM_INT_FEATURES

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

    def __init__(self, saved_model_dir: str | Path, *, version: int | None = None) -> None:
        import tensorflow as tf

        self.path = Path(saved_model_dir)
        self.version = version
        if not (self.path / "saved_model.pb").exists():
            raise ModelVerificationError(f"no saved_model.pb under {self.path}")
        self._loaded = tf.saved_model.load(str(self.path))
        missing = [s for s in SIGNATURES if s not in self._loaded.signatures]
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
            raise ValueError(f"unknown signature {signature!r}; expected one of {SIGNATURES}")
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


@dataclass(frozen=True)
class HashModelSpec:
    """Shape of the fixture model built by ``export_hash_two_tower``."""

    dim: int = 16
    buckets: int = 1009
    seed: int = 0


def export_hash_two_tower(dst: str | Path, spec: HashModelSpec | None = None) -> Path:
    """Write a deterministic SavedModel with the contract signatures to ``dst`` (fixture).

    item vector = normalise(T[illust_id % n] + 0.5 A[artist_id % n]); user vector =
    normalise(mean of T over the non-zero history + 0.3 U[user_id % n]); score =
    sigmoid(5 u.i). So a user's vector lies near the items they bookmarked, which makes
    ANN results checkable in tests.
    """
    import tensorflow as tf

    spec = spec or HashModelSpec()
    rng = np.random.default_rng(spec.seed)
    tables = [rng.normal(size=(spec.buckets, spec.dim)).astype(np.float32) for _ in range(3)]
    n = spec.buckets
    item_specs = {name: tf.TensorSpec([None], tf.int64, name=name) for name in ITEM_INT_FEATURES}
    item_specs["tags"] = tf.TensorSpec([None], tf.string, name="tags")
    user_specs = {
        "user_id": tf.TensorSpec([None], tf.int64, name="user_id"),
        "history": tf.TensorSpec([None, None], tf.int64, name="history"),
    }

    class HashTwoTower(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item_table = tf.Variable(tables[0], trainable=False)
            self.artist_table = tf.Variable(tables[1], trainable=False)
            self.user_table = tf.Variable(tables[2], trainable=False)

        def _item(self, illust_id: tf.Tensor, artist_id: tf.Tensor) -> tf.Tensor:
            vec = tf.gather(self.item_table, tf.math.floormod(illust_id, n)) + 0.5 * tf.gather(
                self.artist_table, tf.math.floormod(artist_id, n)
            )
            return tf.math.l2_normalize(vec, axis=-1)

        def _user(self, user_id: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
            mask = tf.cast(history > 0, tf.float32)[..., None]
            hist = tf.gather(self.item_table, tf.math.floormod(history, n)) * mask
            pooled = tf.reduce_sum(hist, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
            vec = pooled + 0.3 * tf.gather(self.user_table, tf.math.floormod(user_id, n))
            return tf.math.l2_normalize(vec, axis=-1)

        @tf.function(input_signature=[item_specs])
        def item_tower(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return {"embedding": self._item(features["illust_id"], features["artist_id"])}

        @tf.function(input_signature=[user_specs])
        def user_tower(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return {"embedding": self._user(features["user_id"], features["history"])}

        @tf.function(input_signature=[{**item_specs, **user_specs}])
        def score(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            item = self._item(features["illust_id"], features["artist_id"])
            user = self._user(features["user_id"], features["history"])
            return {"score": tf.sigmoid(5.0 * tf.reduce_sum(item * user, axis=-1))}

    module = HashTwoTower()
    dst = Path(dst)
    tf.saved_model.save(
        module,
        str(dst),
        signatures={
            "item_tower": module.item_tower.get_concrete_function(),
            "user_tower": module.user_tower.get_concrete_function(),
            "score": module.score.get_concrete_function(),
        },
    )
    log.info("exported fixture hash two-tower (dim=%d) to %s", spec.dim, dst)
    return dst


def write_mirror_frames(engine: Any, frames: Any) -> dict[str, int]:
    """Load business frames straight into the recsys DB mirror tables (fixture data).

    For tests, benches and demos of the serving side without running extraction; replaces
    what the mirror tables held.
    """
    import sqlalchemy as sa

    from tasks.schema import MIRROR_TABLES, create_recsys_schema

    create_recsys_schema(engine)
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for name, table in MIRROR_TABLES.items():
            frame = getattr(frames, name)
            conn.execute(sa.delete(table))
            rows = frame[[c.name for c in table.columns]].to_dict("records")
            for start in range(0, len(rows), 5000):
                conn.execute(sa.insert(table), rows[start : start + 5000])
            counts[name] = len(rows)
    log.info("wrote fixture mirror tables: %s", counts)
    return counts
