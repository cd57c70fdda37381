"""The ``tf.data`` adapter: numpy feature batches -> a prefetching ``tf.data.Dataset``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tasks.model.features import ITEM_FEATURES


def output_signature() -> dict[str, Any]:
    """TensorSpecs of one training batch: the raw signature features plus label and logQ."""
    import tensorflow as tf

    spec: dict[str, Any] = {
        name: tf.TensorSpec([None], tf.string if name == "tags" else tf.int64)
        for name in ITEM_FEATURES
    }
    spec["user_id"] = tf.TensorSpec([None], tf.int64)
    spec["history"] = tf.TensorSpec([None, None], tf.int64)
    spec["label"] = tf.TensorSpec([None], tf.float32)
    spec["logq"] = tf.TensorSpec([None], tf.float32)
    return spec


def dataset_from_batches(make_batches: Callable[[], Iterator[dict[str, np.ndarray]]]) -> Any:
    """A ``tf.data`` pipeline over a batch generator, prefetching one batch ahead."""
    import tensorflow as tf

    def gen() -> Iterator[dict[str, np.ndarray]]:
        for batch in make_batches():
            if batch["tags"].dtype == object:
                batch = {**batch, "tags": batch["tags"].astype(str)}
            yield batch

    dataset = tf.data.Dataset.from_generator(gen, output_signature=output_signature())
    return dataset.prefetch(tf.data.AUTOTUNE)
