"""Recall channels on tiny hand-checked frames, the round-robin merge and the KV encodings."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from tasks.serving.recall import (
    Candidate,
    active_users,
    combine_neighbors,
    data_as_of,
    decode_ids,
    decode_scored,
    decode_vector,
    encode_ids,
    encode_scored,
    encode_vector,
    follow_new_items,
    hot_items,
    item_cf_neighbors,
    merge_round_robin,
    seen_items,
)


def _interactions() -> pd.DataFrame:
    rows = [
        # user, illust, label, time
        (1, 10, 1, "2024-01-09"),
        (1, 11, 1, "2024-01-09"),
        (1, 12, 0, "2024-01-09"),
        (2, 10, 1, "2024-01-08"),
        (2, 11, 1, "2024-01-08"),
        (3, 10, 1, "2024-01-07"),
        (3, 13, 1, "2023-12-01"),  # outside a 7-day window
        (4, 13, 1, "2023-12-01"),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "create_time"])
    frame["create_time"] = pd.to_datetime(frame["create_time"])
    return frame


def _illusts() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "illust_id": [10, 11, 12, 13, 14, 15],
            "artist_id": [100, 100, 200, 200, 300, 300],
            "total_bookmarks": [5, 50, 70, 1, 90, 0],
            "create_time": pd.to_datetime(
                ["2024-01-01", "2024-01-05", "2023-06-01", "2024-01-08", "2024-01-09", "2023-01-01"]
            ),
        }
    )
    return frame


def test_data_as_of_is_the_newest_interaction() -> None:
    assert data_as_of(_interactions()) == datetime(2024, 1, 9)
    with pytest.raises(ValueError, match="no interactions"):
        data_as_of(_interactions().iloc[:0])


def test_hot_counts_window_bookmarks_then_fills_by_total_bookmarks() -> None:
    hot = hot_items(_interactions(), _illusts(), as_of=datetime(2024, 1, 9), window_days=7, n=5)
    # window bookmarks: 10 -> 3, 11 -> 2; then by total_bookmarks: 14 (90), 12 (70), 13 (1)
    assert hot == [(10, 3.0), (11, 2.0), (14, 0.0), (12, 0.0), (13, 0.0)]
    with pytest.raises(ValueError, match="got 0"):
        hot_items(_interactions(), _illusts(), as_of=datetime(2024, 1, 9), n=0)


def test_follow_new_lists_followed_artists_recent_works_newest_first() -> None:
    follows = pd.DataFrame({"user_id": [1, 1, 2], "artist_id": [100, 300, 200]})
    got = follow_new_items(follows, _illusts(), as_of=datetime(2024, 1, 9), window_days=30)
    # user 1: artist 300 -> 14 (01-09), artist 100 -> 11 (01-05), 10 (01-01); 15 too old
    # user 2: artist 200 -> 13 (01-08); 12 too old
    assert got == {1: [14, 11, 10], 2: [13]}


def test_item_cf_cosine_by_hand() -> None:
    # Bookmark sets: 10 <- {1,2,3}, 11 <- {1,2}, 13 <- {3,4}
    got = item_cf_neighbors(_interactions(), top_m=5)
    assert got[11] == [(10, pytest.approx(2 / np.sqrt(6)))]
    assert [i for i, _ in got[10]] == [11, 13]
    assert got[10][1][1] == pytest.approx(1 / np.sqrt(6))
    assert got[13] == [(10, pytest.approx(1 / np.sqrt(6)))]
    assert 12 not in got  # only a view, never bookmarked


def test_seen_and_active_users() -> None:
    assert seen_items(_interactions()) == {1: [10, 11, 12], 2: [10, 11], 3: [10, 13], 4: [13]}
    assert active_users(_interactions(), as_of=datetime(2024, 1, 9), window_days=7) == [1, 2, 3]


def test_combine_neighbors_sums_similarities() -> None:
    got = combine_neighbors([[(5, 0.5), (6, 0.4)], [(6, 0.3), (7, 0.6)]], n=2)
    assert got == [(6, pytest.approx(0.7)), (7, 0.6)]
    assert combine_neighbors([[(5, 0.5)], [(6, 0.1)]], n=5) == [(5, 0.5), (6, 0.1)]


def test_round_robin_takes_channel_heads_in_turn_skipping_repeats_and_seen() -> None:
    channels = {
        "ann": [(1, 0.9), (2, 0.8), (3, 0.7)],
        "hot": [(2, 10.0), (4, 9.0), (5, 8.0)],
        "i2i": [(9, 0.5)],
    }
    got = merge_round_robin(channels, 5, exclude=[4])
    assert got == [
        Candidate(1, 0.9, "ann"),
        Candidate(2, 10.0, "hot"),
        Candidate(9, 0.5, "i2i"),
        Candidate(3, 0.7, "ann"),  # ann's 2 already taken by hot
        Candidate(5, 8.0, "hot"),  # 4 is excluded
    ]
    assert len(merge_round_robin(channels, 50)) == 6  # all distinct ids, then stops
    with pytest.raises(ValueError, match="-1"):
        merge_round_robin(channels, -1)


def test_encodings_roundtrip() -> None:
    assert decode_ids(encode_ids([3, 1, 2**40])) == [3, 1, 2**40]
    assert decode_ids(None) == []
    assert decode_scored(encode_scored([(7, 0.5), (8, -1.25)])) == [(7, 0.5), (8, -1.25)]
    vec = decode_vector(encode_vector(np.array([0.25, -1.0])))
    assert vec is not None and vec.dtype == np.float32 and vec.tolist() == [0.25, -1.0]
