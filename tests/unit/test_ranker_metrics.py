"""Ranker metrics (tasks.model.evaluate): AUC, GAUC, logloss, HR@k/NDCG@k of ranked lists,
against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.model.evaluate import (
    EvaluationInputError,
    auc,
    gauc,
    grouped_list_metrics,
    logloss,
    ranked_list_metrics,
)


def test_auc_counts_ordered_pairs_and_half_ties() -> None:
    # positives 0.8, 0.4; negatives 0.5, 0.4, 0.1. Pairs (pos > neg): 0.8 beats all 3 = 3;
    # 0.4 beats 0.1 = 1, ties 0.4 = 0.5, loses to 0.5. (3 + 1.5) / 6 = 0.75.
    assert auc([1, 0, 1, 0, 0], [0.8, 0.5, 0.4, 0.4, 0.1]) == pytest.approx(0.75)
    assert auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_gauc_weights_users_by_impressions_and_skips_single_class_users() -> None:
    users = [1, 1, 1, 1, 2, 2, 3, 3, 3]
    labels = [1, 0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.95, 0.7, 0.2, 0.1, 0.2, 0.3]
    # user 1: positive 0.9 beats 0.1 and 0.5, loses to 0.95 -> AUC 2/3, 4 rows;
    # user 2: positive 0.2 loses to 0.7 -> AUC 0, 2 rows; user 3: one class -> skipped.
    # GAUC = (4 * 2/3 + 2 * 0) / 6 = 4/9.
    assert gauc(users, labels, scores) == pytest.approx(4 / 9)
    assert math.isnan(gauc([1, 2], [1, 0], [0.5, 0.5]))


def test_logloss_is_mean_binary_cross_entropy_with_clipping() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2 = -(ln 0.8 + ln 0.6) / 2
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    with pytest.raises(EvaluationInputError):
        logloss([1, 2], [0.5, 0.5])


def test_ranked_list_metrics_by_hand() -> None:
    # list A: relevant at positions 2 and 4 (1-based) of a k=3 cut:
    #   DCG@3 = 1/log2(3) = 0.63093; IDCG@3 (2 relevant) = 1 + 1/log2(3) = 1.63093
    # list B: relevant at position 5 -> miss at k=3, NDCG 0.
    # list C: no relevant item -> skipped.
    out = ranked_list_metrics([[0, 1, 0, 1], [0, 0, 0, 0, 1], [0, 0]], k=3)
    assert out["HR@3"] == pytest.approx(0.5)
    assert out["NDCG@3"] == pytest.approx((0.63093 / 1.63093 + 0.0) / 2, abs=1e-5)
    assert ranked_list_metrics([[1, 0, 0]], k=10) == {"HR@10": 1.0, "NDCG@10": 1.0}


def test_grouped_list_metrics_rank_each_group_by_score() -> None:
    groups = np.array([7, 7, 7, 9, 9])
    labels = np.array([0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8])
    # group 7 ranked: 0.9 (0), 0.5 (1), 0.1 (0) -> hit at position 2, NDCG = 1/log2(3);
    # group 9 ranked: 0.8 (0), 0.2 (1) -> hit at 2 again. k=1: both miss.
    out = grouped_list_metrics(groups, labels, scores, k=2)
    assert out["HR@2"] == 1.0
    assert out["NDCG@2"] == pytest.approx(1 / math.log2(3))
    assert grouped_list_metrics(groups, labels, scores, k=1) == {"HR@1": 0.0, "NDCG@1": 0.0}
