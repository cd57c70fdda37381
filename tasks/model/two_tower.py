"""The two-tower model (TensorFlow / Keras 3) with preprocessing inside, and its export.

Both towers take the raw features of docs/CONTRACTS.md, so serving cannot skew from training:

* item tower: illust_id embedding (vocabulary fitted on train, one OOV bucket) plus a small
  MLP over hashed artist/tags, equal-frequency and prior-knowledge buckets and one-hots;
* user tower: a recency-weighted mean over the bookmark history (newest first, padding 0
  ignored; one learned weight per position) of the history items' *item-tower* vectors, plus
  an MLP over the hashed user_id. The item tower sees each history item's artist, tags and
  counts through an item table baked into the model at build time (the training catalogue,
  looked up by the same illust_id vocabulary; an id outside it contributes its OOV vector).
  Without an item table (``item_table=None``) the history is the masked mean of the shared
  illust_id embedding, as before.

Both vectors are L2-normalised; ``score = sigmoid(scale * <u, i> + bias)``, so ranking by inner
product (Milvus) and by score agree. TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.common import get_logger
from tasks.model.features import (
    COUNT_FEATURES,
    HISTORY_LEN,
    ITEM_FEATURES,
    FeatureSpec,
    FeatureStats,
    config_to_json,
    validate_feature_config,
)

log = get_logger("model")

SIGNATURES = ("item_tower", "user_tower", "score")
FEATURE_CONFIG_FILE = "feature_config.json"


@dataclass(frozen=True)
class ModelParams:
    """Architecture knobs (the feature specs carry per-feature sizes)."""

    dim: int = 32
    hidden: int = 64
    dropout: float = 0.1
    l2: float = 0.0
    init_scale: float = 10.0
    recency: bool = True  # learned per-position weights over the history (else a plain mean)


@functools.cache
def _classes() -> dict[str, Any]:
    """Keras classes, defined on first use so importing this module stays light."""
    import keras
    import tensorflow as tf

    class FeatureEncoder(keras.layers.Layer):
        """Raw column -> dense vector for one :class:`FeatureSpec` (OOV-safe)."""

        def __init__(
            self, spec: FeatureSpec, stats: FeatureStats, shared: Any | None = None, **kwargs: Any
        ) -> None:
            super().__init__(name=f"enc_{spec.name}", **kwargs)
            self.spec = spec
            kind = spec.kind
            if kind == "id_lookup":
                vocab = stats.vocabularies.get(spec.name, [])
                self.lookup = keras.layers.IntegerLookup(
                    vocabulary=np.asarray(vocab, dtype=np.int64) if vocab else None,
                    num_oov_indices=1,
                    mask_token=None,
                    output_mode="int",
                    vocabulary_dtype="int64",
                )
                self.embedding = keras.layers.Embedding(
                    len(vocab) + 1,
                    spec.embedding_dim,
                    embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
                    name=f"emb_{spec.name}",
                )
            elif kind in ("hashed", "tags"):
                self.hashing = keras.layers.Hashing(num_bins=spec.num_bins)
                self.embedding = keras.layers.Embedding(
                    spec.num_bins, spec.embedding_dim, name=f"emb_{spec.name}"
                )
            elif kind in ("equal_freq", "prior_buckets"):
                cuts = stats.boundaries.get(spec.name, []) if kind == "equal_freq" else []
                cuts = list(spec.boundaries) if kind == "prior_buckets" else cuts
                self.discretize = keras.layers.Discretization(bin_boundaries=cuts)
                self.embedding = keras.layers.Embedding(
                    len(cuts) + 1, spec.embedding_dim, name=f"emb_{spec.name}"
                )
            elif kind == "one_hot":
                vocab = stats.vocabularies.get(spec.name, [])
                self.lookup = keras.layers.IntegerLookup(
                    vocabulary=np.asarray(vocab, dtype=np.int64) if vocab else None,
                    num_oov_indices=1,
                    mask_token=None,
                    output_mode="one_hot",
                    vocabulary_dtype="int64",
                )
            elif kind == "history":
                if shared is None:
                    raise ValueError(f"history feature {spec.name!r} needs its shared encoder")
                self.shared = shared
            else:  # pragma: no cover - validate_feature_config guards this
                raise ValueError(f"unknown feature kind {kind!r}")

        def call(self, value: Any) -> Any:
            kind = self.spec.kind
            if kind == "id_lookup":
                return self.embedding(self.lookup(value))
            if kind == "hashed":
                return self.embedding(self.hashing(value))
            if kind == "tags":
                tokens = tf.strings.split(value, sep="|")
                tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
                vectors = tf.ragged.map_flat_values(
                    lambda flat: self.embedding(self.hashing(flat)), tokens
                )
                total = tf.reduce_sum(vectors, axis=1)
                count = tf.cast(tokens.row_lengths(), total.dtype)[:, None]
                return total / tf.maximum(count, 1.0)
            if kind in ("equal_freq", "prior_buckets"):
                return self.embedding(self.discretize(tf.cast(value, tf.float32)))
            if kind == "one_hot":
                return tf.cast(self.lookup(value), tf.float32)
            # history: masked mean of the shared id embedding; padding 0 contributes nothing.
            vectors = self.shared(value)
            mask = tf.cast(tf.not_equal(value, 0), vectors.dtype)[..., None]
            count = tf.reduce_sum(mask, axis=1)
            return tf.reduce_sum(vectors * mask, axis=1) / tf.maximum(count, 1.0)

    class TwoTower(keras.layers.Layer):
        """Item and user towers over raw features; ``call`` returns pairwise logits."""

        def __init__(
            self,
            config: Sequence[FeatureSpec],
            stats: FeatureStats,
            params: ModelParams,
            item_table: Mapping[str, np.ndarray] | None = None,
            history_len: int = HISTORY_LEN,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            validate_feature_config(config)
            self.config = list(config)
            self.stats = stats
            self.params = params
            self.item_table = _item_table_rows(stats, item_table) if item_table else None
            reg = keras.regularizers.L2(params.l2) if params.l2 > 0 else None
            self.encoders: dict[str, Any] = {}
            for spec in self.config:
                if spec.kind != "history":
                    self.encoders[spec.name] = FeatureEncoder(spec, stats)
            for spec in self.config:
                if spec.kind == "history":
                    shared = self.encoders[spec.shared_with]
                    self.encoders[spec.name] = FeatureEncoder(spec, stats, shared=shared)
            self.item_id_name = "illust_id"
            self.item_side = [s for s in self.config if s.tower == "item" and s.kind != "id_lookup"]
            self.user_inputs = [s for s in self.config if s.tower == "user"]
            self.history_names = [s.name for s in self.config if s.kind == "history"]
            id_dim = next(s.embedding_dim for s in self.config if s.name == self.item_id_name)
            if id_dim != params.dim:
                raise ValueError(
                    f"illust_id embedding_dim {id_dim} must equal model dim {params.dim}"
                )
            self.item_mlp = keras.Sequential(
                [
                    keras.layers.Dense(params.hidden, activation="relu", kernel_regularizer=reg),
                    keras.layers.Dropout(params.dropout),
                    keras.layers.Dense(params.dim, kernel_regularizer=reg),
                ],
                name="item_mlp",
            )
            self.user_mlp = keras.Sequential(
                [
                    keras.layers.Dense(params.hidden, activation="relu", kernel_regularizer=reg),
                    keras.layers.Dropout(params.dropout),
                    keras.layers.Dense(params.dim, kernel_regularizer=reg),
                ],
                name="user_mlp",
            )
            self.logit_scale = self.add_weight(
                name="logit_scale",
                shape=(),
                initializer=keras.initializers.Constant(params.init_scale),
            )
            self.logit_bias = self.add_weight(name="logit_bias", shape=(), initializer="zeros")
            self.position_logits = (
                self.add_weight(
                    name="position_logits", shape=(max(history_len, 1),), initializer="zeros"
                )
                if params.recency
                else None
            )

        def _history_weights(self, history: Any) -> Any:
            """[B, L] pooling weights: masked, recency-weighted (learned per position), sum 1."""
            mask = tf.cast(tf.not_equal(history, 0), tf.float32)
            if self.position_logits is not None:
                length = tf.shape(history)[1]
                logits = self.position_logits[
                    : tf.minimum(length, tf.shape(self.position_logits)[0])
                ]
                pad = tf.maximum(length - tf.shape(logits)[0], 0)
                logits = tf.concat([logits, tf.fill([pad], logits[-1])], axis=0)
                mask = mask * tf.exp(logits)[None, :]
            return mask / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9)

        def _history_items(self, history: Any, training: bool) -> Any:
            """[B, L, dim] item-tower vectors of the history's items (via the item table)."""
            rows = self.encoders[self.item_id_name].lookup(history)  # 0 = OOV / padding
            flat = tf.reshape(rows, [-1])
            unique, where = tf.unique(flat)
            feats = {
                name: tf.gather(tf.constant(column), unique)
                for name, column in self.item_table.items()
            }
            vectors = tf.gather(self.item_embedding(feats, training=training), where)
            return tf.reshape(vectors, tf.concat([tf.shape(history), [-1]], axis=0))

        def item_embedding(self, features: Mapping[str, Any], training: bool = False) -> Any:
            base = self.encoders[self.item_id_name](features[self.item_id_name])
            if self.item_side:
                side = tf.concat(
                    [self.encoders[s.name](features[s.source]) for s in self.item_side], axis=-1
                )
                base = base + self.item_mlp(side, training=training)
            return tf.math.l2_normalize(base, axis=-1)

        def user_embedding(self, features: Mapping[str, Any], training: bool = False) -> Any:
            parts = [
                self.encoders[s.name](features[s.source])
                for s in self.user_inputs
                if s.kind != "history"
            ]
            pooled = []
            for name in self.history_names:
                history = features[name]
                weights = self._history_weights(history)[..., None]
                vectors = (
                    self._history_items(history, training)
                    if self.item_table is not None
                    else self.encoders[name].shared(history)
                )
                pooled.append(tf.reduce_sum(vectors * weights, axis=1))
            mixed = self.user_mlp(tf.concat(parts + pooled, axis=-1), training=training)
            base = mixed + (tf.add_n(pooled) if pooled else 0.0)
            return tf.math.l2_normalize(base, axis=-1)

        def pair_logits(self, user_vec: Any, item_vec: Any) -> Any:
            return self.logit_scale * tf.reduce_sum(user_vec * item_vec, -1) + self.logit_bias

        def call(self, features: Mapping[str, Any], training: bool = False) -> Any:
            return self.pair_logits(
                self.user_embedding(features, training), self.item_embedding(features, training)
            )

    return {"FeatureEncoder": FeatureEncoder, "TwoTower": TwoTower}


def _item_table_rows(stats: FeatureStats, items: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw item features in the illust_id lookup's row order (row 0: the OOV/padding row).

    The count features (:data:`COUNT_FEATURES`) are 0 here: a table baked at training time
    cannot hold them as of each query's cutoff, so history items are encoded without them.
    """
    vocab = np.asarray(stats.vocabularies.get("illust_id", []), dtype=np.int64)
    ids = np.asarray(items["illust_id"], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], vocab), 0, max(len(ids) - 1, 0))
    known = ids[order][pos] == vocab if len(ids) else np.zeros(len(vocab), bool)
    rows: dict[str, np.ndarray] = {}
    for name in ITEM_FEATURES:
        column = np.asarray(items[name])[order][pos]
        if name == "tags":
            body = np.where(known, column.astype(str), "")
            text = [""] + [str(t) for t in body]
            rows[name] = np.array([t.encode("utf-8") for t in text], dtype=object)
        elif name == "illust_id":
            rows[name] = np.concatenate([[0], vocab]).astype(np.int64)
        elif name in COUNT_FEATURES:
            rows[name] = np.zeros(len(vocab) + 1, np.int64)
        else:
            body = np.where(known, column.astype(np.int64), 0)
            rows[name] = np.concatenate([[0], body]).astype(np.int64)
    return rows


def build_two_tower(
    config: Sequence[FeatureSpec],
    stats: FeatureStats,
    params: ModelParams | None = None,
    *,
    item_table: Mapping[str, np.ndarray] | None = None,
    history_len: int = HISTORY_LEN,
) -> Any:
    """A fresh :class:`TwoTower` Keras model for this config and fitted stats.

    ``item_table``: raw item features (the :data:`ITEM_FEATURES` columns) of the training
    catalogue; with it the user tower encodes its history items with the item tower.
    """
    return _classes()["TwoTower"](
        config, stats, params or ModelParams(), item_table=item_table, history_len=history_len
    )


def to_tensors(features: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Raw numpy features -> tensors with the signature dtypes (int64 / string)."""
    import tensorflow as tf

    out: dict[str, Any] = {}
    for name, value in features.items():
        if name == "tags":
            out[name] = tf.constant(np.asarray(value, dtype=object).astype(str), dtype=tf.string)
        else:
            out[name] = tf.constant(np.asarray(value, dtype=np.int64), dtype=tf.int64)
    return out


def export_saved_model(
    model: Any, export_dir: Path | str, *, history_len: int = HISTORY_LEN
) -> Path:
    """Write one SavedModel with the ``item_tower``/``user_tower``/``score`` signatures.

    Written to ``<export_dir>.tmp`` first, reloaded and checked, then renamed into place, so
    a reader never sees half an export.
    """
    import shutil

    import tensorflow as tf

    export_dir = Path(export_dir)
    if export_dir.exists():
        raise FileExistsError(f"export directory {export_dir} already exists")
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    i64 = functools.partial(tf.TensorSpec, shape=[None], dtype=tf.int64)
    item_specs = [
        tf.TensorSpec([None], tf.string, name=n) if n == "tags" else i64(name=n)
        for n in ITEM_FEATURES
    ]
    user_specs = [i64(name="user_id"), tf.TensorSpec([None, None], tf.int64, name="history")]

    class Serving(tf.Module):
        def __init__(self, keras_model: Any) -> None:
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=item_specs)
        def item_tower(self, *args: Any) -> dict[str, Any]:
            feats = dict(zip(ITEM_FEATURES, args, strict=True))
            return {"embedding": self.model.item_embedding(feats)}

        @tf.function(input_signature=user_specs)
        def user_tower(self, user_id: Any, history: Any) -> dict[str, Any]:
            feats = {"user_id": user_id, "history": history}
            return {"embedding": self.model.user_embedding(feats)}

        @tf.function(input_signature=[*user_specs, *item_specs])
        def score(self, *args: Any) -> dict[str, Any]:
            feats = dict(zip(("user_id", "history", *ITEM_FEATURES), args, strict=True))
            return {"score": tf.sigmoid(self.model(feats))}

    module = Serving(model)
    # Signature inputs take the TensorSpec names (illust_id, tags, ...), not ``args_0``.
    signatures = {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    extra = tmp / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / FEATURE_CONFIG_FILE).write_text(config_to_json(model.config, model.stats))
    loaded = tf.saved_model.load(str(tmp))
    missing = set(SIGNATURES) - set(loaded.signatures.keys())
    if missing:
        raise RuntimeError(f"export at {tmp} lacks signatures {sorted(missing)}")
    tmp.rename(export_dir)
    log.info("exported SavedModel with signatures %s to %s", list(SIGNATURES), export_dir)
    return export_dir


def load_feature_config(export_dir: Path | str) -> dict[str, Any]:
    """The feature config JSON saved beside a SavedModel export."""
    return json.loads((Path(export_dir) / "assets.extra" / FEATURE_CONFIG_FILE).read_text())
