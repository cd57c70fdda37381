"""The DCN-V2 ranker (Keras 3, keras-rs ``FeatureCross``) with preprocessing inside, and its
SavedModel export with the ``rank`` signature.

Inputs are the raw features of :data:`~tasks.model.ranker.features.RANK_INPUTS`. The item and
user-id/history encoders are the two-tower's (``FeatureEncoder`` over the same
:class:`~tasks.model.features.FeatureSpec` list, fitted stats saved with the model); the
ranker's own counts and ages go through fixed-boundary ``Discretization`` + embeddings, and
the recall evidence enters as multi-hot, signed-log scores and 1/log2(1 + rank) (0 when a
channel did not return the item). The embedded input ``x0`` feeds a stack of
``FeatureCross`` layers (``x_{l+1} = x0 * (W x_l + b) + x_l``, low-rank when
``projection_dim`` is set) in parallel with a deep MLP; their concatenation gives one logit,
and the model outputs ``sigmoid(logit)`` = P(bookmark | shown). TensorFlow, Keras and keras-rs
are imported inside functions only.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.common import get_logger
from tasks.model.features import FeatureSpec, FeatureStats, config_to_json, validate_feature_config
from tasks.model.ranker.config import RankerParams
from tasks.model.ranker.features import RANK_INPUTS, RECALL_CHANNELS

log = get_logger("ranker")

SIGNATURE = "rank"
RANKER_CONFIG_FILE = "ranker_config.json"
# Fixed bucket boundaries (no fitting: the meaning of "1 day old" does not drift).
AGE_BOUNDARIES_S: tuple[float, ...] = (
    0.0, 3600.0, 6 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0, 30 * 86400.0, 90 * 86400.0,
    365 * 86400.0,
)  # fmt: skip
COUNT_BOUNDARIES: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0)
OVERLAP_BOUNDARIES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
BUCKETED: dict[str, tuple[float, ...]] = {
    "user_bookmarks": COUNT_BOUNDARIES,
    "user_views": COUNT_BOUNDARIES,
    "artist_history": COUNT_BOUNDARIES,
    "tag_overlap": OVERLAP_BOUNDARIES,
    "item_age_s": AGE_BOUNDARIES_S,
}


ID_FEATURES: tuple[str, ...] = ("illust_id", "user_id", "history")


def ranker_feature_config(params: RankerParams) -> list[FeatureSpec]:
    """The two-tower's feature specs (item features, user_id, history) sized for the ranker."""
    from tasks.model.features import default_feature_config

    return default_feature_config(embedding_dim=params.dim, hash_bins=params.hash_bins)


@functools.cache
def _classes() -> dict[str, Any]:
    """Keras classes, defined on first use so importing this module stays light."""
    import keras
    import tensorflow as tf

    from tasks.model.two_tower import _classes as two_tower_classes

    FeatureEncoder = two_tower_classes()["FeatureEncoder"]

    class RankerInputs(keras.layers.Layer):
        """Raw ``rank`` inputs -> one dense vector ``x0`` (all preprocessing in the model)."""

        def __init__(
            self,
            config: Sequence[FeatureSpec],
            stats: FeatureStats,
            params: RankerParams,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            validate_feature_config(config)
            self.config = list(config)
            self.stats = stats
            self.params = params
            # Without id features the per-id embeddings of ID_FEATURES are not built (their
            # inputs stay in the signature, unread).
            self.used = [
                spec for spec in self.config if params.id_features or spec.name not in ID_FEATURES
            ]
            self.encoders: dict[str, Any] = {}
            for spec in self.used:
                if spec.kind != "history":
                    self.encoders[spec.name] = FeatureEncoder(spec, stats)
            for spec in self.used:
                if spec.kind == "history":
                    self.encoders[spec.name] = FeatureEncoder(
                        spec, stats, shared=self.encoders[spec.shared_with]
                    )
            small = max(4, params.dim // 4)
            self.buckets = {
                name: keras.layers.Discretization(bin_boundaries=list(cuts), name=f"disc_{name}")
                for name, cuts in BUCKETED.items()
            }
            self.bucket_embeddings = {
                name: keras.layers.Embedding(len(cuts) + 1, small, name=f"emb_{name}")
                for name, cuts in BUCKETED.items()
            }

        def call(self, features: Mapping[str, Any]) -> Any:
            parts = [self.encoders[s.name](features[s.source]) for s in self.used]
            for name, layer in self.buckets.items():
                value = tf.cast(features[name], tf.float32)
                parts.append(self.bucket_embeddings[name](layer(value)))
            parts.append(tf.cast(features["artist_followed"] > 0, tf.float32)[:, None])
            overlap = tf.cast(features["tag_overlap"], tf.float32)[:, None]
            parts.append(tf.math.log1p(overlap))
            hit = tf.cast(features["channel_hit"], tf.float32)
            score = tf.cast(features["channel_score"], tf.float32)
            rank = tf.cast(features["channel_rank"], tf.float32)
            parts.append(hit)
            parts.append(1.0 - tf.reduce_max(hit, axis=1, keepdims=True))  # the "none" slot
            parts.append(tf.sign(score) * tf.math.log1p(tf.abs(score)))
            parts.append(tf.where(rank > 0, 1.0 / (tf.math.log(rank + 1.0) / np.log(2.0)), 0.0))
            return tf.concat(parts, axis=-1)

    return {"RankerInputs": RankerInputs}


def _inputs() -> dict[str, Any]:
    import keras

    channels = len(RECALL_CHANNELS)
    out: dict[str, Any] = {}
    for name in RANK_INPUTS:
        if name == "tags":
            out[name] = keras.Input(shape=(), dtype="string", name=name)
        elif name == "history":
            out[name] = keras.Input(shape=(None,), dtype="int64", name=name)
        elif name in ("channel_hit", "channel_score"):
            out[name] = keras.Input(shape=(channels,), dtype="float32", name=name)
        elif name == "channel_rank":
            out[name] = keras.Input(shape=(channels,), dtype="int64", name=name)
        else:
            out[name] = keras.Input(shape=(), dtype="int64", name=name)
    return out


def build_ranker(
    config: Sequence[FeatureSpec], stats: FeatureStats, params: RankerParams | None = None
) -> Any:
    """A fresh functional Keras model: raw ``rank`` inputs -> P(bookmark | shown), ``[B, 1]``."""
    import keras
    import keras_rs

    params = params or RankerParams()
    reg = keras.regularizers.L2(params.l2) if params.l2 > 0 else None
    inputs = _inputs()
    embed = _classes()["RankerInputs"](config, stats, params, name="ranker_inputs")
    x0 = embed(inputs)
    cross = x0
    for layer in range(params.cross_layers):
        cross = keras_rs.layers.FeatureCross(
            projection_dim=params.projection_dim,
            diag_scale=params.diag_scale,
            kernel_regularizer=reg,
            name=f"cross_{layer}",
        )(x0, cross)
    deep = x0
    for layer, units in enumerate(params.deep_layers):
        deep = keras.layers.Dense(
            units, activation="relu", kernel_regularizer=reg, name=f"deep_{layer}"
        )(deep)
        if params.dropout > 0:
            deep = keras.layers.Dropout(params.dropout, name=f"dropout_{layer}")(deep)
    joined = keras.layers.Concatenate(name="cross_and_deep")([cross, deep])
    output = keras.layers.Dense(1, activation="sigmoid", name="p_bookmark")(joined)
    model = keras.Model(inputs=inputs, outputs=output, name="dcn_v2_ranker")
    model.ranker_config = list(config)
    model.ranker_stats = stats
    model.ranker_params = params
    return model


def to_tensors(features: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Raw numpy features -> tensors with the ``rank`` signature's dtypes."""
    import tensorflow as tf

    out: dict[str, Any] = {}
    for name in RANK_INPUTS:
        value = features[name]
        if name == "tags":
            out[name] = tf.constant(np.asarray(value, dtype=object).astype(str), dtype=tf.string)
        elif name in ("channel_hit", "channel_score"):
            out[name] = tf.constant(np.asarray(value, dtype=np.float32), dtype=tf.float32)
        else:
            out[name] = tf.constant(np.asarray(value, dtype=np.int64), dtype=tf.int64)
    return out


def dataset(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    *,
    batch_size: int,
    shuffle_seed: int | None = None,
) -> Any:
    """An in-memory ``tf.data`` pipeline of (features, label[B, 1]) batches."""
    import tensorflow as tf

    tensors = to_tensors(features)
    if labels is None:
        data = tf.data.Dataset.from_tensor_slices(tensors)
    else:
        y = tf.constant(np.asarray(labels, np.float32).reshape(-1, 1))
        data = tf.data.Dataset.from_tensor_slices((tensors, y))
    if shuffle_seed is not None:
        n = len(np.asarray(features["user_id"]))
        data = data.shuffle(max(n, 1), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict(model: Any, features: Mapping[str, np.ndarray], batch_size: int = 1024) -> np.ndarray:
    """float32[N] probabilities from the Keras model."""
    if not len(np.asarray(features["user_id"])):
        return np.zeros(0, np.float32)
    out = model.predict(dataset(features, None, batch_size=batch_size), verbose=0)
    return np.asarray(out, np.float32).reshape(-1)


def signature_specs(history_len: int | None = None) -> list[Any]:
    """The ``rank`` signature's TensorSpecs, named after the raw inputs."""
    import tensorflow as tf

    channels = len(RECALL_CHANNELS)
    specs = []
    for name in RANK_INPUTS:
        if name == "tags":
            specs.append(tf.TensorSpec([None], tf.string, name=name))
        elif name == "history":
            specs.append(tf.TensorSpec([None, history_len], tf.int64, name=name))
        elif name in ("channel_hit", "channel_score"):
            specs.append(tf.TensorSpec([None, channels], tf.float32, name=name))
        elif name == "channel_rank":
            specs.append(tf.TensorSpec([None, channels], tf.int64, name=name))
        else:
            specs.append(tf.TensorSpec([None], tf.int64, name=name))
    return specs


def ranker_config_json(model: Any) -> str:
    """Feature specs, fitted stats, params, inputs and channels: saved beside the export."""
    payload = json.loads(config_to_json(model.ranker_config, model.ranker_stats))
    payload["ranker"] = {
        "inputs": list(RANK_INPUTS),
        "channels": list(RECALL_CHANNELS),
        "bucket_boundaries": {k: list(v) for k, v in BUCKETED.items()},
        "params": model.ranker_params.as_mlflow_params(),
    }
    return json.dumps(payload, indent=2, sort_keys=True)


def export_ranker(model: Any, export_dir: Path | str) -> Path:
    """Write one SavedModel with the ``rank`` signature: raw inputs -> ``{"score": f32[B]}``.

    Written to ``<export_dir>.tmp``, reloaded and checked, then renamed into place (as the
    two-tower's export), so a reader never sees half an export.
    """
    import tensorflow as tf

    export_dir = Path(export_dir)
    if export_dir.exists():
        raise FileExistsError(f"export directory {export_dir} already exists")
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    specs = signature_specs()

    class Serving(tf.Module):
        def __init__(self, keras_model: Any) -> None:
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=specs)
        def rank(self, *args: Any) -> dict[str, Any]:
            feats = dict(zip(RANK_INPUTS, args, strict=True))
            return {"score": tf.reshape(self.model(feats, training=False), [-1])}

    module = Serving(model)
    tf.saved_model.save(
        module, str(tmp), signatures={SIGNATURE: module.rank.get_concrete_function()}
    )
    extra = tmp / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / RANKER_CONFIG_FILE).write_text(ranker_config_json(model))
    loaded = tf.saved_model.load(str(tmp))
    if SIGNATURE not in loaded.signatures:
        raise RuntimeError(f"export at {tmp} lacks the {SIGNATURE!r} signature")
    tmp.rename(export_dir)
    log.info("exported ranker SavedModel (signature %r) to %s", SIGNATURE, export_dir)
    return export_dir


def load_ranker_config(export_dir: Path | str) -> dict[str, Any]:
    """The ranker config JSON saved beside a SavedModel export."""
    return json.loads((Path(export_dir) / "assets.extra" / RANKER_CONFIG_FILE).read_text())
