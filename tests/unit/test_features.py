"""Raw feature arrays, fitted stats and history cuts (no TensorFlow needed)."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from tasks.model.features import (
    BookmarkHistory,
    FeatureConfigError,
    FeatureSpec,
    config_from_json,
    config_to_json,
    default_feature_config,
    fit_feature_stats,
    item_features_from_frame,
    user_features_from_frames,
    validate_feature_config,
)


def _illusts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "illust_id": [1, 2, 3],
            "artist_id": [10, None, 30],
            "tags": [
                json.dumps([{"name": "cat", "translatedName": "neko", "id": 1}, {"name": "sky"}]),
                None,
                "dog|sea",
            ],
            "width": [100, 200, None],
            "height": [1, 2, 3],
            "sanity_level": [2, 4, 2],
            "restrict": [0, 0, 0],
            "x_restrict": [0, 1, 0],
            "total_bookmarks": [0, 50, 5000],
            "total_view": [10, 100, 1000],
        }
    )


def test_item_features_parse_tags_and_fill_nulls() -> None:
    features = item_features_from_frame(_illusts())
    assert features["tags"].tolist() == ["cat|sky", "", "dog|sea"]
    assert features["artist_id"].tolist() == [10, 0, 30]
    assert features["width"].tolist() == [100, 200, 0]
    assert features["illust_id"].dtype == np.int64


def test_item_features_missing_column_named() -> None:
    with pytest.raises(FeatureConfigError, match="total_view"):
        item_features_from_frame(_illusts().drop(columns="total_view"))


def test_user_history_newest_first_before_as_of() -> None:
    """User 1 bookmarks 5 (t1), 6 (t2), 7 (t3) and views 8 (label 0, never in history).
    As of t3 (exclusive): [6, 5, 0]. User 2 has nothing: all padding."""
    t = [datetime(2024, 1, d) for d in (1, 2, 3, 4)]
    interactions = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "illust_id": [5, 6, 7, 8],
            "label": [1, 1, 1, 0],
            "create_time": [t[0], t[1], t[2], t[3]],
        }
    )
    out = user_features_from_frames([1, 2], interactions, as_of=t[2], history_len=3)
    assert out["history"].tolist() == [[6, 5, 0], [0, 0, 0]]
    full = user_features_from_frames([1], interactions, history_len=2)
    assert full["history"].tolist() == [[7, 6]]


def test_bookmark_history_cut_excludes_target_and_same_second() -> None:
    """Bookmarks of user 1: 5 @ 00:00:00, 6 @ 00:00:10, 7 @ 00:00:10.5, 9 @ 00:01:00.
    As of 7's own time (00:00:10.5) only seconds < 10 count -> [5] (6 shares the second).
    As of 00:01:00 -> [7, 6, 5]. Unknown user 3 -> padding."""
    base = pd.Timestamp("2024-01-01")
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2],
            "illust_id": [5, 6, 7, 9, 11],
            "create_time": [
                base,
                base + pd.Timedelta(seconds=10),
                base + pd.Timedelta(seconds=10.5),
                base + pd.Timedelta(seconds=60),
                base,
            ],
        }
    )
    history = BookmarkHistory.from_frame(frame)
    as_of = np.array(
        [base + pd.Timedelta(seconds=10.5), base + pd.Timedelta(seconds=60), base],
        dtype="datetime64[us]",
    )
    out = history.histories(np.array([1, 1, 3]), as_of, 4)
    assert out.tolist() == [[5, 0, 0, 0], [7, 6, 5, 0], [0, 0, 0, 0]]


def test_user_features_cut_like_training() -> None:
    """Refresh's builder uses training's cut: as of 00:00:10.5 the bookmark at 00:00:10 is out
    (same second), 4 and 5 at 00:00:05 tie and the larger id comes first -> [5, 4, 3, 0]."""
    base = pd.Timestamp("2024-01-01")
    interactions = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "illust_id": [3, 4, 5, 9],
            "label": [1, 1, 1, 1],
            "create_time": [base + pd.Timedelta(seconds=s) for s in (0, 5, 5, 10)],
        }
    )
    as_of = base + pd.Timedelta(seconds=10.5)
    out = user_features_from_frames([1], interactions, as_of=as_of, history_len=4)
    assert out["history"].tolist() == [[5, 4, 3, 0]]
    training = BookmarkHistory.from_frame(interactions).histories(
        np.array([1]), np.array([as_of], dtype="datetime64[us]"), 4
    )
    np.testing.assert_array_equal(out["history"], training)


def test_pad_lays_out_already_cut_histories() -> None:
    """KV lists and pyfunc strings: newest first, truncated to H, 0-padded."""
    out = BookmarkHistory.pad(["12|7|3", [4], None, ""], 2)
    assert out.dtype == np.int64
    assert out.tolist() == [[12, 7], [4, 0], [0, 0], [0, 0]]


def test_fit_stats_equal_frequency_and_vocabularies() -> None:
    """total_view 10/100/1000 in 2 equal-frequency bins -> one cut at the median, 100."""
    config = [
        FeatureSpec("illust_id", "item", "id_lookup"),
        FeatureSpec("total_view", "item", "equal_freq", num_bins=2),
        FeatureSpec("sanity_level", "item", "one_hot"),
    ]
    stats = fit_feature_stats(config, item_features_from_frame(_illusts()))
    assert stats.boundaries == {"total_view": [100.0]}
    assert stats.vocabularies == {"illust_id": [1, 2, 3], "sanity_level": [2, 4]}
    again, again_stats = config_from_json(config_to_json(config, stats))
    assert again == config and again_stats == stats


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(FeatureConfigError, match="colour"):
        validate_feature_config(
            [*default_feature_config(), FeatureSpec("colour", "item", "one_hot")]
        )
    with pytest.raises(FeatureConfigError, match="duplicate"):
        validate_feature_config(
            [*default_feature_config(), FeatureSpec("tags", "item", "tags", num_bins=8)]
        )
    with pytest.raises(FeatureConfigError, match="shared_with"):
        validate_feature_config(
            [
                FeatureSpec("illust_id", "item", "id_lookup"),
                FeatureSpec("history", "user", "history", shared_with="artist_id"),
            ]
        )
