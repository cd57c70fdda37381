"""Ranker features and rows on hand-built frames: values by hand, and point in time (nothing at
or after a row's request time reaches its features)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.model.ranker.features import (
    RANK_INPUTS,
    RECALL_CHANNELS,
    RankingFeatureBuilder,
    RecallEvidence,
)
from tasks.model.ranker.rows import time_split, training_rows

ROOT = Path(__file__).resolve().parents[2]
T = pd.Timestamp
REQUEST = T("2026-01-03 00:00:00")


def _tags(*names: str) -> str:
    return json.dumps([{"name": n, "translatedName": None, "id": i} for i, n in enumerate(names)])


def _illusts() -> pd.DataFrame:
    base = dict(width=100, height=100, sanity_level=2, restrict=0, x_restrict=0)
    rows = [
        dict(illust_id=10, artist_id=100, tags=_tags("cat", "sky"), create_time=T("2026-01-01")),
        dict(illust_id=11, artist_id=100, tags=_tags("cat"), create_time=T("2026-01-01")),
        dict(illust_id=12, artist_id=200, tags=_tags("dog", "sea"), create_time=T("2026-01-01")),
        dict(illust_id=13, artist_id=200, tags=_tags("sea"), create_time=T("2026-01-01")),
        dict(illust_id=14, artist_id=300, tags=_tags("sea"), create_time=None),
    ]
    return pd.DataFrame(
        [{**base, **r, "total_bookmarks": 5, "total_view": 50, "update_time": None} for r in rows]
    )


def _past() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events strictly before REQUEST: a bookmark of 10, a view of 12, a follow of artist 100."""
    interactions = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "illust_id": [10, 12, 13],
            "label": [1, 0, 1],
            "create_time": [T("2026-01-02 10:00"), T("2026-01-02 11:00"), T("2026-01-02 12:00")],
        }
    )
    follows = pd.DataFrame(
        {"user_id": [1], "artist_id": [100], "create_time": [T("2026-01-02 09:00")]}
    )
    return interactions, follows


def _future() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events at or after REQUEST: bookmarks of 13 and 11 (one in the request's own second),
    a view, a follow of artist 200 (at the request second and later) and of artist 300
    without a time."""
    interactions = pd.DataFrame(
        {
            "user_id": [1, 1, 1],
            "illust_id": [13, 11, 14],
            "label": [1, 1, 0],
            "create_time": [REQUEST, T("2026-01-03 00:00:00.900"), T("2026-01-04")],
        }
    )
    follows = pd.DataFrame(
        {"user_id": [1, 1], "artist_id": [200, 300], "create_time": [REQUEST, None]}
    )
    return interactions, follows


def _features(with_future: bool) -> dict[str, np.ndarray]:
    interactions, follows = _past()
    if with_future:
        more_i, more_f = _future()
        interactions = pd.concat([interactions, more_i], ignore_index=True)
        follows = pd.concat([follows, more_f], ignore_index=True)
    builder = RankingFeatureBuilder(
        interactions, _illusts(), follows, history_len=4, tag_history_len=4
    )
    return builder.features([1, 1, 1, 3], [11, 12, 14, 11], [REQUEST] * 4)


def test_features_by_hand() -> None:
    f = _features(with_future=False)
    assert list(f) == list(RANK_INPUTS)
    np.testing.assert_array_equal(f["history"][0], [10, 0, 0, 0])
    np.testing.assert_array_equal(f["history"][3], [0, 0, 0, 0])  # unknown user
    np.testing.assert_array_equal(f["user_bookmarks"], [1, 1, 1, 0])
    np.testing.assert_array_equal(f["user_views"], [1, 1, 1, 0])
    # 11 is by artist 100 (followed, one bookmark of theirs: 10); 12/14 by 200/300.
    np.testing.assert_array_equal(f["artist_followed"], [1, 0, 0, 0])
    np.testing.assert_array_equal(f["artist_history"], [1, 0, 0, 0])
    # history tags {cat, sky}: 11 {cat} -> 1, 12 {dog, sea} -> 0, 14 {sea} -> 0.
    np.testing.assert_array_equal(f["tag_overlap"], [1, 0, 0, 0])
    # created 2026-01-01 00:00, request 2026-01-03 00:00: two days; 14 has no create_time.
    np.testing.assert_array_equal(f["item_age_s"], [172800, 172800, -1, 172800])
    np.testing.assert_array_equal(f["artist_id"], [100, 200, 300, 100])
    assert f["tags"].tolist() == ["cat", "dog|sea", "sea", "cat"]
    assert f["channel_hit"].shape == (4, len(RECALL_CHANNELS)) and not f["channel_hit"].any()
    assert not f["channel_rank"].any() and not f["channel_score"].any()


def test_events_at_or_after_the_request_change_no_feature() -> None:
    """Bookmarks, views and follows at the request second or later (and a follow of unknown
    time) leave every feature as it was without them."""
    before, after = _features(with_future=False), _features(with_future=True)
    for name in RANK_INPUTS:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def test_events_before_the_request_do_change_features() -> None:
    """The converse, so the test above is not vacuous: one second earlier, they count."""
    interactions, follows = _past()
    more_i, more_f = _future()
    more_i = more_i.assign(create_time=REQUEST - pd.Timedelta(seconds=1))
    more_f = more_f.assign(create_time=REQUEST - pd.Timedelta(seconds=1))
    builder = RankingFeatureBuilder(
        pd.concat([interactions, more_i], ignore_index=True),
        _illusts(),
        pd.concat([follows, more_f], ignore_index=True),
        history_len=4,
        tag_history_len=4,
    )
    f = builder.features([1, 1], [11, 12], [REQUEST, REQUEST])
    assert f["user_bookmarks"].tolist() == [3, 3] and f["user_views"].tolist() == [2, 2]
    assert f["artist_followed"].tolist() == [1, 1]  # artist 200 followed a second before
    assert f["artist_history"].tolist() == [2, 1]  # 10 and 11 by 100; 13 by 200
    assert f["tag_overlap"].tolist() == [1, 1]  # 12's "sea" now in the history (13)


def test_recall_evidence_from_rows() -> None:
    ev = RecallEvidence.from_rows([{"ann": (0.9, 1), "hot": (12.0, 3)}, {}])
    c = {name: i for i, name in enumerate(RECALL_CHANNELS)}
    assert ev.hit[0].tolist() == [1.0 if n in ("ann", "hot") else 0.0 for n in RECALL_CHANNELS]
    assert ev.rank[0, c["hot"]] == 3 and ev.score[0, c["ann"]] == pytest.approx(0.9)
    assert not ev.hit[1].any()
    with pytest.raises(ValueError, match="unknown recall channel"):
        RecallEvidence.from_rows([{"nope": (1.0, 1)}])


def test_recall_channels_are_the_apis() -> None:
    """tasks.model cannot import tasks.serving: the names are checked against the API here."""
    source = (ROOT / "api" / "app.py").read_text()
    for name in RECALL_CHANNELS:
        assert re.search(rf'\(\s*"{name}"\s*,', source), name


def test_training_rows_label_views_bookmarks_and_time_sampled_negatives() -> None:
    start, end = datetime(2026, 1, 2), datetime(2026, 1, 3)
    interactions = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1],
            "illust_id": [10, 12, 11, 12, 13],
            "label": [1, 0, 1, 1, 0],
            "create_time": [
                T("2026-01-01 05:00"),  # before the interval: history only
                T("2026-01-02 01:00"),  # view of 12, bookmarked later: dropped
                T("2026-01-02 02:00"),
                T("2026-01-02 03:00"),
                T("2026-01-02 04:00"),  # viewed, not bookmarked: a 0
            ],
        }
    )
    negatives = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2],
            "illust_id": [21, 20, 22, 13, 30],
            "interval_start": [T(start)] * 5,
            "interval_end": [T(end)] * 5,
        }
    )
    rows = training_rows(interactions, negatives, start, end)
    got = list(
        zip(rows["illust_id"], rows["request_time"], rows["label"], rows["source"], strict=True)
    )
    # Negatives 20, 21, 22 (13 was viewed: dropped) take user 1's bookmark times 02:00, 03:00
    # round robin; user 2 has no bookmark in the interval: the interval's start.
    assert [(i, str(t), lab, s) for i, t, lab, s in got] == [
        (30, "2026-01-02 00:00:00", 0, "sampled"),
        (11, "2026-01-02 02:00:00", 1, "shown"),
        (20, "2026-01-02 02:00:00", 0, "sampled"),
        (22, "2026-01-02 02:00:00", 0, "sampled"),
        (12, "2026-01-02 03:00:00", 1, "shown"),
        (21, "2026-01-02 03:00:00", 0, "sampled"),
        (13, "2026-01-02 04:00:00", 0, "shown"),
    ]


def test_time_split_takes_the_latest_rows() -> None:
    rows = pd.DataFrame({"request_time": pd.date_range("2026-01-01", periods=10, freq="h")})
    assert time_split(rows, 0.2).tolist() == [False] * 8 + [True] * 2


def test_ranker_params_validate_and_fingerprint() -> None:
    from tasks.model.ranker.config import RankerParams

    assert RankerParams().fingerprint() == RankerParams().fingerprint()
    assert RankerParams(cross_layers=3).fingerprint() != RankerParams().fingerprint()
    assert RankerParams(deep_layers=(8, 4)).as_mlflow_params()["deep_layers"] == "8,4"
    for bad in (
        dict(val_share=0.5),
        dict(projection_dim=0),
        dict(deep_layers=(0,)),
        dict(epochs=0),
    ):
        with pytest.raises(ValueError):
            RankerParams(**bad)  # type: ignore[arg-type]
