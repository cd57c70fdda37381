"""A deterministic fixture model with exactly the contract signatures (a test double).

Embeddings are looked up from fixed random tables by hashed ids. Tests, benches and the
TF-Serving stand-in's tests use it so serving is testable without a trained model; it is
not a recommender, and production code never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.core.common import get_logger
from tasks.model.features import ITEM_INT_FEATURES

log = get_logger("fixture_model")


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
