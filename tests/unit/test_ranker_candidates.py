"""The ranker's training candidate sets on a hand-built 3-user mirror: which cutoffs (tiers
below the gate's holdout), which pools from the real recall channels, which labels, and no
feature from at or after a cutoff; the served-like NDCG with appended positives as misses."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

import tasks.serving.recall as recall
from tasks.model.ranker.candidates import CandidateSets, list_ndcg, training_sets
from tasks.model.ranker.features import RECALL_CHANNELS
from tasks.model.ranker.rows import before_holdout
from tests.doubles.hand_frames import six_illusts

C = {name: i for i, name in enumerate(RECALL_CHANNELS)}
AT_2 = 1 / math.log2(3)


def _toy() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Illusts 1..6 (artists 10, 10, 20, 20, 30, 30; total_bookmarks 60..10), all out on 01-01.
    u1 bookmarks 1, 2, 3, 4 (08, 09, 10, 11 h); u2 bookmarks 1, 2, views 5, bookmarks 3
    (08:30, 09:30, 10:30, 11:30) and follows artist 30; u3 bookmarks 5, 6 (08, 09 h)."""
    t = pd.Timestamp
    illusts = six_illusts()
    rows = [
        (1, 1, 1, "08:00"),
        (1, 2, 1, "09:00"),
        (1, 3, 1, "10:00"),
        (1, 4, 1, "11:00"),  # u1's gate holdout
        (2, 1, 1, "08:30"),
        (2, 2, 1, "09:30"),
        (2, 5, 0, "10:30"),
        (2, 3, 1, "11:30"),  # u2's gate holdout
        (3, 5, 1, "08:00"),
        (3, 6, 1, "09:00"),  # u3's gate holdout
    ]
    interactions = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "create_time"])
    interactions["create_time"] = pd.to_datetime("2026-01-02 " + interactions["create_time"])
    follows = pd.DataFrame({"user_id": [2], "artist_id": [30], "create_time": [t("2026-01-01")]})
    return interactions, illusts, follows


def test_training_sets_cutoffs_pools_labels_hand_computed() -> None:
    """Gate holdout removed: u1 {1, 2, 3}, u2 {1, 2, view 5}, u3 {5}.
    Tier 1 = each user's last remaining positive: u1 3 @10:00, u2 2 @09:30 (u2's view of 5
    comes after it and is cut; u3 has one positive: no target). Channels on the rows before
    the tier-1 cutoffs (u1 {1, 2}, u2 {1}, u3 {5}; as_of 09:00): hot = 1 (2 bookmarks),
    2, 5 (1 each, by total_bookmarks), 3, 4, 6; i2i sim(1, 2) = 1 / sqrt(2 * 1).
    u1 (seen 1, 2): i2i all seen, hot -> 5, 3, 4, 6; positive 3. u2 (seen 1): i2i 2,
    follow_new 6, hot 5, follow_new 5 (repeat), hot 3, 4 -> 2, 6, 5, 3, 4; positive 2.
    Tier 2: u1 2 @09:00, channels on u1 {1}, u2 {1}, u3 {5} (as_of 08:30): hot = 1, 5, 2,
    3, 4, 6; i2i empty -> 5, 2, 3, 4, 6; positive 2. No tier 3 (one positive left each)."""
    interactions, illusts, follows = _toy()
    sets = training_sets(interactions, illusts, follows, recall, tiers=3, history_len=4)
    users, items = sets.features["user_id"], sets.features["illust_id"]
    assert users.tolist() == [1] * 4 + [2] * 5 + [1] * 5
    assert items.tolist() == [5, 3, 4, 6, 2, 6, 5, 3, 4, 5, 2, 3, 4, 6]
    assert sets.labels.tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert sets.set_ids.tolist() == [0] * 4 + [1] * 5 + [2] * 5
    assert sets.tiers is not None and sets.tiers.tolist() == [1] * 9 + [2] * 5
    assert sets.recalled == 3 and sets.appended is not None and not sets.appended.any()
    # Item 4 (u1's gate holdout) is a plain negative: the holdout never shapes training.
    # Evidence: u2's positive 2 = i2i rank 1 (score 1/sqrt 2) and hot rank 2 (1 bookmark);
    # its 6 = follow_new rank 1 (score 1) and hot rank 6; 5 = follow_new rank 2, hot rank 3.
    rank, score = sets.features["channel_rank"], sets.features["channel_score"]
    assert rank[4].tolist() == [0, 1, 0, 2]
    assert score[4, C["i2i"]] == pytest.approx(1 / math.sqrt(2)) and score[4, C["hot"]] == 1
    assert rank[5].tolist() == [0, 0, 1, 6] and rank[6].tolist() == [0, 0, 2, 3]
    assert rank[1].tolist() == [0, 0, 0, 4]  # u1's tier-1 positive 3: 4th in hot
    # Features over the tier's snapshot, requested at its end + 1 s as serving does (tier 1:
    # 09:00:01, tier 2: 08:30:01): nothing of a user's from its cutoff on reaches a feature.
    bookmarks, history = sets.features["user_bookmarks"], sets.features["history"]
    assert bookmarks[0] == 2 and history[0].tolist() == [2, 1, 0, 0]  # u1 tier 1: not 3
    assert bookmarks[4] == 1 and sets.features["user_views"][4] == 0  # u2: not 2, not view 5
    assert bookmarks[9] == 1 and history[9].tolist() == [1, 0, 0, 0]  # u1 tier 2: not 2
    age = sets.features["item_age_s"]  # every illust out on 01-01 00:00
    assert age[0] == 33 * 3600 + 1 and age[9] == 32 * 3600 + 1800 + 1


def test_training_sets_append_missed_positive_and_subsample() -> None:
    """A pool of one: u1 tier 1 [5] misses 3 (appended, hot rank 4); u2 [2] recalls it;
    u1 tier 2 [5] misses 2 (appended, hot rank 3). Served-like NDCG counts those as misses.
    Without ``append_missed`` (the default) u1's two sets keep their negative only."""
    interactions, illusts, follows = _toy()
    plain = training_sets(interactions, illusts, follows, recall, pool=1, history_len=4)
    assert plain.features["illust_id"].tolist() == [5, 2, 5]
    assert plain.labels.tolist() == [0, 1, 0] and plain.set_ids.tolist() == [0, 1, 2]
    assert plain.appended is not None and not plain.appended.any() and plain.recalled == 1
    sets = training_sets(
        interactions, illusts, follows, recall, pool=1, history_len=4, append_missed=True
    )
    assert sets.features["illust_id"].tolist() == [5, 3, 2, 5, 2]
    assert sets.labels.tolist() == [0, 1, 1, 0, 1]
    assert sets.appended is not None
    assert sets.appended.tolist() == [False, True, False, False, True]
    assert sets.features["channel_rank"][1].tolist() == [0, 0, 0, 4]
    assert sets.recalled == 1
    assert list_ndcg(sets, sets.recall_order_scores()) == pytest.approx(1 / 3)
    # One negative kept per set out of u2's four (seeded draw; the positive always kept).
    small = training_sets(interactions, illusts, follows, recall, negatives=1, history_len=4)
    counts = np.bincount(small.set_ids)
    assert counts.tolist() == [2, 2, 2] and small.labels.sum() == 3
    with pytest.raises(ValueError, match="tiers"):
        training_sets(interactions, illusts, follows, recall, tiers=0)


def test_list_ndcg_counts_appended_positives_as_misses() -> None:
    """Set 0: the positive was appended after recall missed it -> 0 for every ranking;
    set 1: positive 2nd in recall order. The denominator keeps both sets."""
    sets = CandidateSets(
        set_ids=np.array([0, 0, 1, 1]),
        labels=np.array([0, 1, 0, 1]),
        features={"user_id": np.array([1, 1, 2, 2])},
        recalled=1,
        appended=np.array([False, True, False, False]),
    )
    assert list_ndcg(sets, sets.recall_order_scores()) == pytest.approx(AT_2 / 2)
    assert list_ndcg(sets, np.array([0.0, 9.0, 0.0, 1.0])) == pytest.approx(0.5)
    assert sets.subset(np.array([False, False, True, True])).recalled == 1


def test_before_holdout_drops_rows_from_the_users_holdout_on() -> None:
    rows = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "illust_id": [5, 6, 7],
            "request_time": pd.to_datetime(
                ["2026-01-02 10:00", "2026-01-02 11:00", "2026-01-03 00:00"]
            ),
            "label": [1, 0, 1],
            "source": ["shown"] * 3,
        }
    )
    cutoffs = pd.Series([datetime(2026, 1, 2, 11)], index=[1])
    kept = before_holdout(rows, cutoffs)
    assert kept["illust_id"].tolist() == [5, 7]
