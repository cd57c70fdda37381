"""Offline evaluation: the temporal leave-last-positive split, rank metrics and baselines.

Protocol (docs EVALUATION.md): per user, interactions ordered by (timestamp, item id); the
test item is the user's last positive; train is everything of that user strictly before it.
Every item not interacted with in train is ranked; the test item's rank ``r`` is the number
of such items scoring strictly higher. HR@K = share of test users with r < K,
NDCG@K = mean of 1/log2(r + 2) where r < K. numpy/scipy only: no TensorFlow needed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.core.common import get_logger

log = get_logger("evaluate")

DEFAULT_KS: tuple[int, ...] = (10, 20)
EASE_LAMBDA_GRID: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0)
REQUIRED_COLUMNS = ("user_id", "illust_id", "label", "create_time")

# A scorer maps row indices of the split's users to a [len(rows), n_items] score matrix.
Scorer = Callable[[np.ndarray], np.ndarray]


class EvaluationInputError(ValueError):
    """The interactions handed to evaluation cannot be split or scored."""


@dataclass(frozen=True)
class LeaveLastSplit:
    """A leave-last-positive split with dense user/item indices.

    ``train`` keeps the business columns plus ``user_idx``/``item_idx``. ``test_user_idx``
    and ``test_item_idx`` are aligned arrays (one test item per test user). ``test_time``
    is each test positive's timestamp (history for it must be strictly earlier).
    """

    train: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    test_user_idx: np.ndarray
    test_item_idx: np.ndarray
    test_time: np.ndarray
    n_dropped: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def positive_matrix(self) -> sp.csr_matrix:
        """Binary user x item matrix of train positives (label 1)."""
        pos = self.train[self.train["label"] == 1]
        return _binary_matrix(
            pos["user_idx"].to_numpy(), pos["item_idx"].to_numpy(), self.n_users, self.n_items
        )

    def seen_matrix(self) -> sp.csr_matrix:
        """Binary user x item matrix of every train interaction (all labels count as seen)."""
        return _binary_matrix(
            self.train["user_idx"].to_numpy(),
            self.train["item_idx"].to_numpy(),
            self.n_users,
            self.n_items,
        )


def _binary_matrix(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    data = np.ones(len(rows), dtype=np.float64)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(n_rows, n_cols))
    matrix.data[:] = 1.0  # duplicates summed by csr construction collapse back to 1
    return matrix


def _check_interactions(interactions: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in interactions.columns]
    if missing:
        raise EvaluationInputError(f"interactions lack columns {missing}")
    if interactions.empty:
        raise EvaluationInputError("interactions are empty: nothing to split")
    bad_labels = set(pd.unique(interactions["label"])) - {0, 1}
    if bad_labels:
        raise EvaluationInputError(f"labels must be 0/1, got {sorted(bad_labels)}")


def leave_last_positive_split(
    interactions: pd.DataFrame, *, item_ids: Iterable[int] | None = None
) -> LeaveLastSplit:
    """Cut the temporal leave-last-positive split of EVALUATION.md.

    ``item_ids`` sets the ranked catalogue (default: every item in ``interactions``).
    Users with fewer than 2 positives have no test item but keep all their rows in train.
    """
    _check_interactions(interactions)
    frame = interactions.loc[:, list(REQUIRED_COLUMNS)].copy()
    frame["user_id"] = frame["user_id"].astype(np.int64)
    frame["illust_id"] = frame["illust_id"].astype(np.int64)
    frame["label"] = frame["label"].astype(np.int64)
    frame = frame.sort_values(["user_id", "create_time", "illust_id"], kind="mergesort")
    frame = frame.reset_index(drop=True)

    catalogue = np.unique(
        np.concatenate(
            [
                frame["illust_id"].to_numpy(),
                np.asarray(list(item_ids) if item_ids is not None else [], np.int64),
            ]
        )
    )
    user_ids = np.unique(frame["user_id"].to_numpy())
    frame["user_idx"] = np.searchsorted(user_ids, frame["user_id"].to_numpy())
    frame["item_idx"] = np.searchsorted(catalogue, frame["illust_id"].to_numpy())

    # Position of each row inside its user's ordered sequence, and of the user's last positive.
    frame["pos_in_user"] = frame.groupby("user_idx").cumcount()
    positives = frame[frame["label"] == 1]
    n_pos = positives.groupby("user_idx").size()
    last_pos = positives.groupby("user_idx")["pos_in_user"].max()
    test_users = n_pos.index[n_pos.to_numpy() >= 2].to_numpy()
    cut = pd.Series(np.iinfo(np.int64).max, index=np.arange(len(user_ids)), dtype=np.int64)
    cut.loc[test_users] = last_pos.loc[test_users].to_numpy()
    row_cut = cut.to_numpy()[frame["user_idx"].to_numpy()]
    train = frame[frame["pos_in_user"].to_numpy() < row_cut].drop(columns="pos_in_user")

    test_rows = frame.set_index(["user_idx", "pos_in_user"]).loc[
        list(zip(test_users, last_pos.loc[test_users].to_numpy(), strict=True))
    ]
    split = LeaveLastSplit(
        train=train.reset_index(drop=True),
        user_ids=user_ids,
        item_ids=catalogue,
        test_user_idx=np.asarray(test_users, dtype=np.int64),
        test_item_idx=test_rows["item_idx"].to_numpy().astype(np.int64),
        test_time=test_rows["create_time"].to_numpy(),
        n_dropped=len(frame) - len(train) - len(test_users),
    )
    log.info(
        "split %d interactions: %d train rows, %d test users, %d items, %d later rows dropped",
        len(frame),
        len(split.train),
        len(test_users),
        split.n_items,
        split.n_dropped,
    )
    return split


def ranks_of_test_items(
    scores: np.ndarray, seen: sp.csr_matrix | np.ndarray, test_item_idx: np.ndarray
) -> np.ndarray:
    """Rank of each row's test item among the unseen items, ties broken fairly.

    rank = (unseen items scoring strictly higher) + (unseen items scoring the same) // 2:
    the median position of the test item if tied items were put in random order. (Counting
    only strictly higher items rewards a scorer for giving many items the same score: an
    ItemKNN that scores 0 for most of a sparse catalogue would "hit" every test item it knows
    nothing about.) ``seen`` marks train interactions per row (excluded from the ranking); the
    test item is always ranked even if it was also seen earlier.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(test_item_idx):
        raise EvaluationInputError(
            f"scores shape {scores.shape} does not match {len(test_item_idx)} test items"
        )
    if not np.all(np.isfinite(scores)):
        raise EvaluationInputError("scores contain NaN or infinite values")
    seen_dense = seen.toarray() if sp.issparse(seen) else np.asarray(seen)
    seen_dense = seen_dense.astype(bool)
    rows = np.arange(len(test_item_idx))
    target = scores[rows, test_item_idx][:, None]
    higher = (scores > target) & ~seen_dense
    higher[rows, test_item_idx] = False
    ties = (scores == target) & ~seen_dense
    ties[rows, test_item_idx] = False
    return (higher.sum(axis=1) + ties.sum(axis=1) // 2).astype(np.int64)


def rank_metrics(
    ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """HR@K and NDCG@K from 0-based ranks (one per test user)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise EvaluationInputError("no test users: cannot compute rank metrics")
    if np.any(ranks < 0):
        raise EvaluationInputError(f"ranks must be >= 0, got min {ranks.min()}")
    out: dict[str, float] = {}
    gains = 1.0 / np.log2(ranks + 2.0)
    for k in ks:
        if k <= 0:
            raise EvaluationInputError(f"K must be positive, got {k}")
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, gains, 0.0).mean())
    return out


def paired_bootstrap(
    ranks_a: Sequence[int] | np.ndarray,
    ranks_b: Sequence[int] | np.ndarray,
    k: int = 10,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float]]]:
    """HR@k and NDCG@k of list A minus list B on the same test users, with a 95% interval
    from a paired bootstrap over users (the same resampled users score both lists).

    ``diff`` is the exact difference on all users; ``ci95`` the 2.5/97.5 percentiles of
    ``resamples`` seeded resamples; ``a_better`` the share of resamples where A is ahead.
    """
    a = np.asarray(ranks_a, dtype=np.int64)
    b = np.asarray(ranks_b, dtype=np.int64)
    if a.shape != b.shape or a.size == 0:
        raise EvaluationInputError(
            f"paired ranks need the same non-empty users, got {a.shape} and {b.shape}"
        )
    if resamples < 1:
        raise EvaluationInputError(f"resamples must be >= 1, got {resamples}")
    per_user = {
        f"HR@{k}": (a < k).astype(np.float64) - (b < k),
        f"NDCG@{k}": np.where(a < k, 1.0 / np.log2(a + 2.0), 0.0)
        - np.where(b < k, 1.0 / np.log2(b + 2.0), 0.0),
    }
    rows = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    out: dict[str, dict[str, float | list[float]]] = {}
    for name, delta in per_user.items():
        means = delta[rows].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[name] = {
            "diff": float(delta.mean()),
            "ci95": [float(low), float(high)],
            "a_better": float((means > 0).mean()),
        }
    return out


def evaluate_scorer(
    split: LeaveLastSplit,
    scorer: Scorer,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 256,
) -> dict[str, float]:
    """Score every test user in batches with ``scorer`` and return rank metrics."""
    seen = split.seen_matrix()
    ranks: list[np.ndarray] = []
    for start in range(0, len(split.test_user_idx), batch_size):
        users = split.test_user_idx[start : start + batch_size]
        scores = scorer(users)
        ranks.append(
            ranks_of_test_items(
                scores, seen[users], split.test_item_idx[start : start + batch_size]
            )
        )
    return rank_metrics(np.concatenate(ranks) if ranks else np.array([], np.int64), ks)


def validation_split(split: LeaveLastSplit) -> LeaveLastSplit:
    """The same cut applied to the train part (for tuning without touching the test items)."""
    train = split.train.loc[:, list(REQUIRED_COLUMNS)]
    return leave_last_positive_split(train, item_ids=split.item_ids)


class MostPop:
    """Scores each item by its count of train positives (same list for every user)."""

    name = "MostPop"

    def fit(self, positives: sp.csr_matrix) -> MostPop:
        self.popularity_ = np.asarray(positives.sum(axis=0)).ravel().astype(np.float64)
        return self

    def score(self, user_rows: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.popularity_, (user_rows.shape[0], 1))


class ItemKNN:
    """Item-based CF: cosine on the binary user x item positive matrix.

    score(u, j) = sum over the user's train positives i of cos(i, j); self-similarity is 0.
    The similarity is kept sparse (only co-occurring pairs), so it fits memory on catalogues
    where a dense item x item matrix does not.
    """

    name = "ItemKNN"

    def fit(self, positives: sp.csr_matrix) -> ItemKNN:
        x = sp.csr_matrix(positives, dtype=np.float64)
        co = (x.T @ x).tocsr()
        norms = np.sqrt(co.diagonal())
        inverse = sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0))
        sim = (inverse @ co @ inverse).tocsr()
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        self.similarity_ = sim
        return self

    def score(self, user_rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((sp.csr_matrix(user_rows, dtype=np.float64) @ self.similarity_).todense())


class EASE:
    """EASE^R (Steck 2019): B = I - P diagMat(1/diag(P)), P = (X^T X + lambda I)^-1, diag(B)=0.

    P is a dense item x item inverse: with ``max_items`` set and a larger catalogue, EASE is
    fitted on the ``max_items`` most bookmarked items only (``items_`` holds their columns) and
    every other item scores below all of them.
    """

    name = "EASE"

    def __init__(self, l2: float = 100.0, max_items: int | None = None) -> None:
        if not l2 > 0:
            raise ValueError(f"EASE l2 (lambda) must be > 0, got {l2!r}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"EASE max_items must be >= 1, got {max_items!r}")
        self.l2 = float(l2)
        self.max_items = max_items

    def fit(self, positives: sp.csr_matrix) -> EASE:
        x = sp.csr_matrix(positives, dtype=np.float64)
        self.n_items_ = x.shape[1]
        self.items_ = None
        if self.max_items is not None and x.shape[1] > self.max_items:
            popularity = np.asarray(x.sum(axis=0)).ravel()
            self.items_ = np.sort(np.argsort(-popularity, kind="stable")[: self.max_items])
            x = x[:, self.items_]
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        np.fill_diagonal(weights, 0.0)
        self.weights_ = weights
        return self

    def score(self, user_rows: sp.csr_matrix) -> np.ndarray:
        if self.items_ is None:
            return np.asarray(user_rows @ self.weights_)
        part = np.asarray(sp.csr_matrix(user_rows)[:, self.items_] @ self.weights_)
        floor = (part.min(axis=1, keepdims=True) if part.size else np.zeros((0, 1))) - 1.0
        out = np.repeat(floor, self.n_items_, axis=1)
        out[:, self.items_] = part
        return out


def evaluate_baseline(
    model: MostPop | ItemKNN | EASE, split: LeaveLastSplit, *, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Fit ``model`` on the split's train positives and return its rank metrics."""
    positives = split.positive_matrix()
    model.fit(positives)
    return evaluate_scorer(split, lambda users: model.score(positives[users]), ks=ks)


def tune_ease(
    split: LeaveLastSplit,
    *,
    grid: Sequence[float] = EASE_LAMBDA_GRID,
    metric: str = "NDCG@10",
    max_items: int | None = None,
) -> tuple[float, dict[float, float]]:
    """Pick EASE's lambda on a validation split cut the same way from train."""
    if not grid:
        raise ValueError("EASE lambda grid is empty")
    val = validation_split(split)
    if len(val.test_user_idx) == 0:
        default = 100.0 if 100.0 in grid else float(grid[0])
        log.warning("no validation users to tune EASE on: lambda %s", default)
        return default, {}
    results = {
        float(l2): evaluate_baseline(EASE(l2, max_items=max_items), val)[metric] for l2 in grid
    }
    best = max(results, key=lambda l2: (results[l2], -l2))
    log.info("EASE lambda by validation %s: %s -> best %s", metric, results, best)
    return best, results


def evaluate_baselines(
    split: LeaveLastSplit,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    ease_grid: Sequence[float] = EASE_LAMBDA_GRID,
    max_dense_items: int = 20_000,
) -> dict[str, dict[str, float]]:
    """MostPop, ItemKNN and tuned EASE^R on the same split (EASE's lambda reported as
    ``lambda``, the items it was fitted on as ``items``).

    ItemKNN's similarity is sparse, so it always runs. EASE holds a dense item x item inverse:
    above ``max_dense_items`` items it is fitted on the ``max_dense_items`` most bookmarked
    items (logged, and ``items`` says so) rather than exhausting memory.
    """
    out: dict[str, dict[str, float]] = {
        "MostPop": evaluate_baseline(MostPop(), split, ks=ks),
        "ItemKNN": evaluate_baseline(ItemKNN(), split, ks=ks),
    }
    cap = max_dense_items if split.n_items > max_dense_items else None
    if cap is not None:
        log.warning(
            "%d items > max_dense_items=%d: EASE fitted on the %d most bookmarked items",
            split.n_items,
            max_dense_items,
            cap,
        )
    best_l2, _ = tune_ease(split, grid=ease_grid, max_items=cap)
    out["EASE"] = {
        **evaluate_baseline(EASE(best_l2, max_items=cap), split, ks=ks),
        "lambda": best_l2,
        "items": float(min(split.n_items, cap or split.n_items)),
    }
    for name, metrics in out.items():
        log.info("baseline %s: %s", name, metrics)
    return out


# -- ranker metrics: pointwise probabilities and ranked candidate lists -------------------
def _binary_inputs(
    labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise EvaluationInputError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise EvaluationInputError("labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise EvaluationInputError("scores contain NaN or infinite values")
    return y, s


def auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC: the chance a random positive scores above a random negative (ties count half).

    NaN when only one class is present.
    """
    from scipy.stats import rankdata

    y, s = _binary_inputs(labels, scores)
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(
    user_ids: Sequence[int] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
) -> float:
    """Group AUC: per-user AUC averaged with weights = the user's impressions (rows); users
    with a single class are skipped. NaN when no user has both classes."""
    y, s = _binary_inputs(labels, scores)
    users = np.asarray(user_ids).reshape(-1)
    if users.shape != y.shape:
        raise EvaluationInputError(f"user_ids {users.shape} and labels {y.shape} differ in shape")
    total, weight = 0.0, 0
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[lo:hi]
        value = auc(y[rows], s[rows])
        if np.isfinite(value):
            total += value * len(rows)
            weight += len(rows)
    return total / weight if weight else float("nan")


def logloss(
    labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray, eps: float = 1e-7
) -> float:
    """Mean binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]``)."""
    y, p = _binary_inputs(labels, probs)
    if not len(y):
        raise EvaluationInputError("no rows: cannot compute logloss")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def ranked_list_metrics(
    relevance_lists: Iterable[Sequence[float] | np.ndarray], k: int = 10
) -> dict[str, float]:
    """HR@k and NDCG@k of ranked candidate lists (binary relevance, in ranked order).

    HR@k: share of lists with a relevant item in the top k. NDCG@k: DCG@k / ideal DCG@k with
    gains 1/log2(position + 1). Lists without a relevant item are skipped (nothing to find).
    """
    if k <= 0:
        raise EvaluationInputError(f"K must be positive, got {k}")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hits, ndcgs = [], []
    for rel in relevance_lists:
        r = (np.asarray(rel, dtype=np.float64).reshape(-1) > 0).astype(np.float64)
        n_rel = int(r.sum())
        if n_rel == 0:
            continue
        top = r[:k]
        hits.append(float(top.any()))
        ideal = discounts[: min(n_rel, k)].sum()
        ndcgs.append(float((top * discounts[: len(top)]).sum() / ideal))
    if not hits:
        return {f"HR@{k}": float("nan"), f"NDCG@{k}": float("nan")}
    return {f"HR@{k}": float(np.mean(hits)), f"NDCG@{k}": float(np.mean(ndcgs))}


def grouped_list_metrics(
    group_ids: Sequence[int] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    k: int = 10,
) -> dict[str, float]:
    """:func:`ranked_list_metrics` of each group's rows ranked by score (descending; ties keep
    the input order), e.g. a user's candidate set ranked by the ranker."""
    y, s = _binary_inputs(labels, scores)
    groups = np.asarray(group_ids).reshape(-1)
    order = np.lexsort((np.arange(len(s)), -s, groups))
    g = groups[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True]) if len(g) else np.array([0])
    lists = [y[order[lo:hi]] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return ranked_list_metrics(lists, k)
