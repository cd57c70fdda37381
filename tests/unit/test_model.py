"""Two-tower model: OOV-safe preprocessing, shared masked history, export round trip.

One tiny model (dims 8) is built and exported once for the module to keep TF time low.
"""

from __future__ import annotations

import numpy as np
import pytest

from tasks.model.features import default_feature_config, fit_feature_stats

ITEMS = {
    "illust_id": np.array([1, 2, 3, 4], np.int64),
    "artist_id": np.array([5, 5, 6, 7], np.int64),
    "tags": np.array(["cat|sky", "sky", "", "dog|cat"], object),
    "width": np.array([100, 200, 300, 400], np.int64),
    "height": np.array([100, 200, 300, 400], np.int64),
    "sanity_level": np.array([2, 2, 4, 6], np.int64),
    "restrict": np.array([0, 0, 0, 1], np.int64),
    "x_restrict": np.array([0, 0, 1, 0], np.int64),
    "total_bookmarks": np.array([0, 5, 50, 5000], np.int64),
    "total_view": np.array([10, 100, 1000, 10**6], np.int64),
}
# Row 1: unseen illust/artist ids, unseen tags, unseen one-hot values, huge counts.
UNSEEN = {
    **{k: v[:2].copy() for k, v in ITEMS.items()},
    "illust_id": np.array([1, 999_999], np.int64),
    "artist_id": np.array([5, 424242], np.int64),
    "tags": np.array(["cat", "never|seen|tags"], object),
    "sanity_level": np.array([2, 99], np.int64),
    "x_restrict": np.array([0, 7], np.int64),
    "total_view": np.array([10, 10**12], np.int64),
}
USERS = {
    "user_id": np.array([1, 77_777], np.int64),
    "history": np.array([[2, 3, 0, 0], [999_999, 0, 0, 0]], np.int64),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):  # type: ignore[no-untyped-def]
    import keras

    from tasks.model.two_tower import ModelParams, build_two_tower, export_saved_model

    keras.utils.set_random_seed(0)
    config = default_feature_config(embedding_dim=8, hash_bins=32)
    model = build_two_tower(config, fit_feature_stats(config, ITEMS), ModelParams(dim=8, hidden=8))
    path = export_saved_model(model, tmp_path_factory.mktemp("export") / "model")
    return model, path


def test_export_round_trip_matches_in_memory_model_with_oov(exported) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    from tasks.model.two_tower import to_tensors

    model, path = exported
    loaded = tf.saved_model.load(str(path))
    feats = to_tensors({**UNSEEN, **USERS})
    exported_score = loaded.signatures["score"](**feats)["score"].numpy()
    memory_score = tf.sigmoid(model(feats)).numpy()
    assert exported_score.shape == (2,)
    assert np.all(np.isfinite(exported_score))
    np.testing.assert_allclose(exported_score, memory_score, rtol=1e-5, atol=1e-6)
    item_vec = loaded.signatures["item_tower"](**to_tensors(UNSEEN))["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(item_vec, axis=1), 1.0, rtol=1e-5)
    user_vec = loaded.signatures["user_tower"](**to_tensors(USERS))["embedding"].numpy()
    assert user_vec.shape == (2, 8)
    # score = sigmoid(scale * <u, i> + bias): the towers and the score signature agree.
    logits = float(model.logit_scale.numpy()) * np.sum(user_vec * item_vec, 1) + float(
        model.logit_bias.numpy()
    )
    np.testing.assert_allclose(exported_score, 1 / (1 + np.exp(-logits)), rtol=1e-4)


def test_history_shares_item_embedding_and_masks_padding(exported) -> None:  # type: ignore[no-untyped-def]
    """history [2, 3, 0, 0] pools exactly the illust_id embeddings of 2 and 3 (padding
    ignored, the same layer object as the item tower), so it equals history [3, 2]."""
    from tasks.model.two_tower import to_tensors

    model, _ = exported
    history_encoder = model.encoders["history"]
    assert history_encoder.shared is model.encoders["illust_id"]
    padded = history_encoder(to_tensors({"history": np.array([[2, 3, 0, 0]])})["history"])
    short = history_encoder(to_tensors({"history": np.array([[3, 2]])})["history"])
    ids = model.encoders["illust_id"](to_tensors({"illust_id": np.array([2, 3])})["illust_id"])
    np.testing.assert_allclose(padded.numpy(), short.numpy(), rtol=1e-6)
    np.testing.assert_allclose(padded.numpy()[0], ids.numpy().mean(axis=0), rtol=1e-5)


def test_nan_loss_raises(exported) -> None:  # type: ignore[no-untyped-def]
    from tasks.model.training.config import TrainParams
    from tasks.model.training.errors import NonFiniteLossError
    from tasks.model.training.loop import fit_model
    from tasks.model.two_tower import to_tensors

    model, _ = exported
    batch = to_tensors({**ITEMS, "user_id": np.arange(4), "history": np.zeros((4, 2), np.int64)})
    import tensorflow as tf

    batch["label"] = tf.constant([1.0, np.nan, 0.0, 1.0])
    batch["logq"] = tf.zeros([4])
    with pytest.raises(NonFiniteLossError, match="nan"):
        fit_model(
            model, lambda epoch: [batch], None, TrainParams(loss="pointwise", epochs=1, dim=8)
        )
