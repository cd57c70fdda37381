"""Hand-checked rank metrics and the leave-last-positive split."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from tasks.model.evaluate import (
    EvaluationInputError,
    leave_last_positive_split,
    paired_bootstrap,
    rank_metrics,
    ranks_of_test_items,
)


def test_rank_metrics_hand_checked() -> None:
    """ranks 0, 3, 9, 10, 25: three of five under 10; under 20 adds rank 10.

    NDCG@10 = (1/log2(2) + 1/log2(5) + 1/log2(11)) / 5 = (1 + 0.430677 + 0.289065) / 5.
    """
    metrics = rank_metrics([0, 3, 9, 10, 25])
    assert metrics["HR@10"] == pytest.approx(0.6)
    assert metrics["NDCG@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 5)
    assert metrics["HR@20"] == pytest.approx(0.8)
    assert metrics["NDCG@20"] == pytest.approx(
        (1 + 1 / math.log2(5) + 1 / math.log2(11) + 1 / math.log2(12)) / 5
    )
    assert metrics["NDCG@10"] == pytest.approx(0.3439484, abs=1e-6)


def test_paired_bootstrap_hand_checked() -> None:
    """A ranks 0, 3, 12, 1; B ranks 0, 12, 12, 9. Per user HR@10 A - B = 0, 1, 0, 0 -> diff
    0.25; NDCG@10 A - B = 0, 1/log2(5), 0, 1/log2(3) - 1/log2(11) -> diff their mean / 4.
    Every resample's HR diff is a multiple of 1/4 in [0, 1], never below 0."""
    a, b = [0, 3, 12, 1], [0, 12, 12, 9]
    out = paired_bootstrap(a, b, k=10, resamples=500, seed=3)
    assert out["HR@10"]["diff"] == pytest.approx(0.25)
    ndcg = (1 / math.log2(5) + 1 / math.log2(3) - 1 / math.log2(11)) / 4
    assert out["NDCG@10"]["diff"] == pytest.approx(ndcg)
    low, high = out["HR@10"]["ci95"]
    assert 0.0 <= low <= 0.25 <= high <= 1.0 and (4 * low).is_integer()
    assert 0.0 < out["HR@10"]["a_better"] < 1.0  # resamples without user 2 tie at 0
    assert out == paired_bootstrap(a, b, k=10, resamples=500, seed=3)  # seeded
    same = paired_bootstrap(a, a, k=10)
    assert same["HR@10"] == {"diff": 0.0, "ci95": [0.0, 0.0], "a_better": 0.0}
    with pytest.raises(EvaluationInputError, match="same non-empty users"):
        paired_bootstrap([0, 1], [0], k=10)


def test_ranks_count_strictly_higher_unseen_only() -> None:
    """Row 0: test item 1 scores 0.5; item 0 (0.9) is seen, item 2 ties (not higher),
    item 4 (0.7) is higher -> r = 1. Row 1: test item 3 is the best -> r = 0."""
    scores = np.array([[0.9, 0.5, 0.5, 0.1, 0.7], [0.1, 0.2, 0.3, 0.9, 0.3]])
    seen = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    ranks = ranks_of_test_items(scores, seen, np.array([1, 3]))
    assert ranks.tolist() == [1, 0]


def test_ties_take_the_median_position() -> None:
    """Row 0: all five items score 0 -> the test item ties with 4 -> rank 0 + 4 // 2 = 2.
    Row 1: item 0 is higher, items 1-3 tie with test item 4 -> rank 1 + 3 // 2 = 2; with item 1
    seen (row 2) only 2 ties remain -> rank 1 + 1 = 2; a scorer that knows nothing no longer
    ranks the test item first."""
    scores = np.array([[0.0] * 5, [1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0]])
    seen = np.array([[0] * 5, [0] * 5, [0, 1, 0, 0, 0]])
    assert ranks_of_test_items(scores, seen, np.array([0, 4, 4])).tolist() == [2, 2, 2]


def test_ranks_reject_nan_scores() -> None:
    with pytest.raises(EvaluationInputError, match="NaN"):
        ranks_of_test_items(np.array([[np.nan, 1.0]]), np.zeros((1, 2)), np.array([0]))


def test_rank_metrics_rejects_empty() -> None:
    with pytest.raises(EvaluationInputError, match="no test users"):
        rank_metrics([])


def _t(hour: int) -> datetime:
    return datetime(2024, 1, 1, hour)


def test_leave_last_positive_split_by_hand() -> None:
    """User 1: a(+,t1) b(-,t2) c(+,t3) d(-,t4) -> test c, train a b, d dropped.
    User 2: one positive -> no test item, both rows train.
    User 3: two positives at the same time t5 -> order by item id: 7 then 9, test 9."""
    rows = [
        (1, 10, 1, _t(1)),
        (1, 11, 0, _t(2)),
        (1, 12, 1, _t(3)),
        (1, 13, 0, _t(4)),
        (2, 10, 1, _t(1)),
        (2, 13, 0, _t(2)),
        (3, 9, 1, _t(5)),
        (3, 7, 1, _t(5)),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "create_time"])
    split = leave_last_positive_split(frame)
    assert split.item_ids.tolist() == [7, 9, 10, 11, 12, 13]
    tests = {
        int(split.user_ids[u]): int(split.item_ids[i])
        for u, i in zip(split.test_user_idx, split.test_item_idx, strict=True)
    }
    assert tests == {1: 12, 3: 9}
    train = {(int(r.user_id), int(r.illust_id)) for r in split.train.itertuples()}
    assert train == {(1, 10), (1, 11), (2, 10), (2, 13), (3, 7)}
    assert split.n_dropped == 1


def test_split_rejects_missing_columns() -> None:
    with pytest.raises(EvaluationInputError, match="create_time"):
        leave_last_positive_split(pd.DataFrame({"user_id": [1], "illust_id": [2], "label": [1]}))
