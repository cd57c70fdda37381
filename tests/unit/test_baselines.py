"""Baselines on tiny matrices with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.model.evaluate import EASE, ItemKNN, MostPop


def test_mostpop_counts_train_positives() -> None:
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1]], dtype=float))
    scores = MostPop().fit(x).score(x[[0, 1]])
    assert scores.tolist() == [[3, 1, 1], [3, 1, 1]]


def test_itemknn_cosine_by_hand() -> None:
    """X rows (users) = [1,1,0], [1,1,1], [0,0,1].
    Columns: i0={u0,u1}, i1={u0,u1}, i2={u1,u2}; all norms sqrt(2).
    cos(0,1) = 2/2 = 1, cos(0,2) = cos(1,2) = 1/2; self-similarity 0.
    User 2 (likes i2): scores [0.5, 0.5, 0]. User 0 (i0, i1): [1, 1, 1]."""
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=float))
    model = ItemKNN().fit(x)
    assert model.similarity_.toarray() == pytest.approx(
        np.array([[0, 1, 0.5], [1, 0, 0.5], [0.5, 0.5, 0]])
    )
    assert model.score(x[[2, 0]]) == pytest.approx(np.array([[0.5, 0.5, 0], [1, 1, 1]]))


def test_ease_closed_form_by_hand() -> None:
    """X = [[1,1],[1,0]], lambda = 1: G = X^T X + I = [[3,1],[1,2]], det 5,
    P = G^-1 = [[2,-1],[-1,3]]/5, B_ij = -P_ij / P_jj: B_01 = (1/5)/(3/5) = 1/3,
    B_10 = (1/5)/(2/5) = 1/2, diag 0. User [0,1] scores item 0 with B_10 = 0.5."""
    x = sp.csr_matrix(np.array([[1, 1], [1, 0]], dtype=float))
    model = EASE(l2=1.0).fit(x)
    assert model.weights_ == pytest.approx(np.array([[0, 1 / 3], [0.5, 0]]))
    assert model.score(sp.csr_matrix(np.array([[0.0, 1.0]]))) == pytest.approx(
        np.array([[0.5, 0.0]])
    )


def test_ease_rejects_non_positive_lambda() -> None:
    with pytest.raises(ValueError, match="-1"):
        EASE(l2=-1)


def test_ease_capped_to_the_most_bookmarked_items_by_hand() -> None:
    """X = [[1,1,0],[1,0,0]], lambda 1, max_items 2: items 0 (2 bookmarks) and 1 (1) are kept,
    so B is the 2x2 case above, [[0,1/3],[0.5,0]]; item 2 scores min(kept scores) - 1.
    User [0,1,0] scores [B_10, 0, 0 - 1] = [0.5, 0, -1]."""
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0]], dtype=float))
    model = EASE(l2=1.0, max_items=2).fit(x)
    assert model.items_.tolist() == [0, 1]
    assert model.weights_ == pytest.approx(np.array([[0, 1 / 3], [0.5, 0]]))
    assert model.score(sp.csr_matrix(np.array([[0.0, 1.0, 0.0]]))) == pytest.approx(
        np.array([[0.5, 0.0, -1.0]])
    )


def test_evaluate_baselines_caps_ease_on_large_catalogues() -> None:
    """Users 1-3 bookmark item 10 then their own item (11-13): with max_dense_items=3
    (< 4 items) ItemKNN (sparse) runs in full and EASE on the 3 most bookmarked items.
    MostPop: each test item (popularity 0) ties with the 2 other unseen items 11-13 (item 10
    is seen) -> rank 0 + 2 // 2 = 1 -> HR@10 = 1, NDCG@10 = 1/log2(3)."""
    from datetime import datetime

    import pandas as pd

    from tasks.model.evaluate import evaluate_baselines, leave_last_positive_split

    rows = [(u, 10, 1, datetime(2024, 1, 1)) for u in (1, 2, 3)]
    rows += [(u, 10 + u, 1, datetime(2024, 1, 2)) for u in (1, 2, 3)]
    frame = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "create_time"])
    out = evaluate_baselines(leave_last_positive_split(frame), max_dense_items=3)
    assert set(out) == {"MostPop", "ItemKNN", "EASE"}
    assert out["EASE"]["items"] == 3.0
    assert out["MostPop"]["HR@10"] == 1.0
    assert out["MostPop"]["NDCG@10"] == pytest.approx(1 / np.log2(3))
