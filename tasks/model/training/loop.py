"""The training loop: the two losses and Adam with early stopping on validation loss."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.core.common import get_logger
from tasks.model.training.config import TrainParams
from tasks.model.training.errors import NonFiniteLossError, TrainingDataError

log = get_logger("train")


def _loss_fn(model: Any, loss: str) -> Callable[[Mapping[str, Any], bool], Any]:
    import tensorflow as tf

    def pointwise(batch: Mapping[str, Any], training: bool) -> Any:
        logits = model(batch, training=training)
        return tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=batch["label"], logits=logits)
        )

    def inbatch_softmax(batch: Mapping[str, Any], training: bool) -> Any:
        # keras-rs retrieval layers: logQ (sampling-probability) correction, then the other
        # rows' copies of a row's own item are masked out of its negatives.
        import keras_rs

        users = model.user_embedding(batch, training=training)
        items = model.item_embedding(batch, training=training)
        logits = model.logit_scale * tf.matmul(users, items, transpose_b=True)
        probability = tf.broadcast_to(tf.exp(batch["logq"])[None, :], tf.shape(logits))
        logits = keras_rs.layers.SamplingProbabilityCorrection()(logits, probability)
        labels = tf.eye(tf.shape(logits)[0], dtype=logits.dtype)
        logits = keras_rs.layers.RemoveAccidentalHits()(logits, labels, batch["illust_id"])
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    return pointwise if loss == "pointwise" else inbatch_softmax


@dataclass
class FitHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    examples_per_s: list[float] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    best_epoch: int = 0


def fit_model(
    model: Any,
    train_data: Callable[[int], Any],
    val_data: Callable[[int], Any] | None,
    params: TrainParams,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitHistory:
    """Adam with early stopping on validation loss; best weights restored at the end.

    ``train_data(epoch)`` / ``val_data(epoch)`` return iterables of feature batches (a
    ``tf.data.Dataset`` or anything yielding dicts of tensors).
    """
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(learning_rate=params.learning_rate)
    compute_loss = _loss_fn(model, params.loss)

    @tf.function(reduce_retracing=True)
    def train_step(batch: Mapping[str, Any]) -> Any:
        with tf.GradientTape() as tape:
            loss = compute_loss(batch, True)
            reg = tf.add_n(model.losses) if model.losses else 0.0
            total = loss + reg
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, model.trainable_variables, strict=True) if g is not None]
        )
        return loss

    @tf.function(reduce_retracing=True)
    def eval_step(batch: Mapping[str, Any]) -> Any:
        return compute_loss(batch, False)

    history = FitHistory()
    best = (np.inf, None)
    waited = 0
    for epoch in range(params.epochs):
        started, total, count, seen = time.perf_counter(), 0.0, 0, 0
        for step, batch in enumerate(train_data(epoch)):
            loss = float(train_step(batch))
            if not np.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became {loss} at epoch {epoch} step {step}"
                )
            size = int(batch["label"].shape[0])
            total, count, seen = total + loss * size, count + size, seen + size
            if step % 200 == 0:
                log.info("epoch %d step %d loss %.4f", epoch, step, loss)
        if count == 0:
            raise TrainingDataError("the training split produced no batches")
        history.n_train = count
        history.train_loss.append(total / count)
        history.examples_per_s.append(seen / max(time.perf_counter() - started, 1e-9))
        val_loss = float("nan")
        if val_data is not None:
            vtotal, vcount = 0.0, 0
            for batch in val_data(epoch):
                size = int(batch["label"].shape[0])
                vtotal += float(eval_step(batch)) * size
                vcount += size
            history.n_val = vcount
            val_loss = vtotal / vcount if vcount else float("nan")
        history.val_loss.append(val_loss)
        metrics = {
            "train_loss": history.train_loss[-1],
            "val_loss": val_loss,
            "examples_per_s": history.examples_per_s[-1],
        }
        log.info("epoch %d: %s", epoch, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        monitored = val_loss if np.isfinite(val_loss) else history.train_loss[-1]
        if monitored < best[0] - 1e-6:
            best, waited = (monitored, [w.numpy() for w in model.weights]), 0
            history.best_epoch = epoch
        else:
            waited += 1
            if waited >= params.patience:
                log.info("early stop after epoch %d (best epoch %d)", epoch, history.best_epoch)
                break
    if best[1] is not None:
        for var, value in zip(model.weights, best[1], strict=True):
            var.assign(value)
    return history
