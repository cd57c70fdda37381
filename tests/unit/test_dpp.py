"""DPP greedy MAP: hand-checked tiny kernel, invariants, trade-off and window variant."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.serving.dpp import (
    build_kernel,
    dpp_rerank,
    greedy_map,
    greedy_map_window,
    mean_pairwise_distance,
)


def _three_item_kernel() -> np.ndarray:
    # q = (1.0, 0.9, 0.6); A and B are near duplicates (S=0.95), C is unrelated to both.
    quality = np.array([1.0, 0.9, 0.6])
    similarity = np.array([[1.0, 0.95, 0.0], [0.95, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return quality[:, None] * similarity * quality[None, :]


def test_three_item_kernel_hand_checked() -> None:
    kernel = _three_item_kernel()
    # Step 1: diag = (1.0, 0.81, 0.36) -> A (index 0).
    # Step 2: gain(B) = 0.81 - 0.855**2 / 1.0 = 0.078975, gain(C) = 0.36 -> C.
    # Step 3: gain(B | A, C) = 0.078975 (C is orthogonal) -> B.
    assert greedy_map(kernel, 3) == [0, 2, 1]
    assert greedy_map(kernel, 2) == [0, 2]
    # The pair is the true MAP among 2-subsets containing A: det{A,C}=0.36 > det{A,B}.
    det_ac = np.linalg.det(kernel[np.ix_([0, 2], [0, 2])])
    det_ab = np.linalg.det(kernel[np.ix_([0, 1], [0, 1])])
    assert det_ac == pytest.approx(0.36)
    assert det_ab == pytest.approx(0.078975)


def test_greedy_step_matches_brute_force_log_det() -> None:
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(12, 6))
    kernel = feats @ feats.T + 0.1 * np.eye(12)
    picked = greedy_map(kernel, 5)
    for step in range(1, 5):
        prefix = picked[:step]
        best = max(
            (i for i in range(12) if i not in prefix),
            key=lambda i: np.linalg.slogdet(kernel[np.ix_(prefix + [i], prefix + [i])])[1],
        )
        assert picked[step] == best


def test_rerank_returns_k_distinct_items_first_is_top_quality() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 3))  # rank 4 kernel: greedy stops early, fill kicks in
    scores = rng.uniform(size=40)
    picked = dpp_rerank(scores, vectors, 10, theta=0.7)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert picked[0] == int(np.argmax(scores))
    assert len(dpp_rerank(scores, vectors, 100, theta=0.7)) == 40


def test_diversity_grows_with_theta() -> None:
    rng = np.random.default_rng(3)
    # Two tight clusters: the 10 best-scored items all sit in cluster 0.
    centers = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    vectors = centers[labels] + 0.05 * rng.normal(size=(30, 3))
    scores = np.concatenate(
        [np.linspace(1.0, 0.8, 10), np.linspace(0.7, 0.5, 10), np.linspace(0.6, 0.4, 10)]
    )
    diversity = [
        mean_pairwise_distance(vectors[dpp_rerank(scores, vectors, 6, theta=theta)])
        for theta in (0.0, 0.2, 0.5, 0.9)
    ]
    assert diversity == sorted(diversity)
    assert diversity[0] < 0.05  # relevance only: all from cluster 0
    assert diversity[-1] > 0.5  # strong diversity: spread over clusters
    assert dpp_rerank(scores, vectors, 6, theta=0.0) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("window", [8, 9, 50])
def test_window_variant_equals_full_when_window_covers_list(window: int) -> None:
    rng = np.random.default_rng(11)
    feats = rng.normal(size=(30, 10))
    kernel = feats @ feats.T + 0.01 * np.eye(30)
    assert greedy_map_window(kernel, 8, window) == greedy_map(kernel, 8)


def test_window_variant_differs_and_stays_distinct_with_small_window() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(25, 8))
    kernel = build_kernel(rng.uniform(size=25), vectors, 0.5)
    picked = greedy_map_window(kernel, 12, 3)
    assert len(picked) == len(set(picked)) == 12
    # Each pick maximises the gain w.r.t. the last (window - 1) picks: check one step.
    for step in range(3, 12):
        recent = picked[step - 2 : step]
        candidates = [i for i in range(25) if i not in picked[:step]]
        best = max(
            candidates,
            key=lambda i: np.linalg.slogdet(kernel[np.ix_(recent + [i], recent + [i])])[1],
        )
        assert picked[step] == best


def test_bad_input_names_the_value() -> None:
    with pytest.raises(ValueError, match="1.5"):
        dpp_rerank([1.0, 2.0], np.eye(2), 1, theta=1.5)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        greedy_map(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        greedy_map_window(np.eye(3), 2, 0)
