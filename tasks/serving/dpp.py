"""DPP re-ranking for diversity: fast greedy MAP inference (Chen, Zhang & Zhou, NeurIPS 2018).

The kernel is ``L = diag(q) S diag(q)``: ``q`` is each candidate's quality (from its recall
score) and ``S`` the similarity of the candidates' item vectors. Greedy MAP adds, one item at
a time, the item that most increases ``log det L_Y``; the incremental Cholesky update makes
each step ``O(M k)`` for M candidates instead of a determinant per candidate.

The sliding-window variant (same paper, section 4) only asks each new item to be diverse
from the last ``window`` picks, which suits long feeds where only nearby items are seen
together. With ``window >= max_length`` it is exactly the full algorithm.

The trade-off follows the paper's ``q_i = exp(alpha * r_i)``: ``theta`` in ``[0, 1]`` is the
weight on diversity. ``theta = 0`` keeps the relevance order, ``theta = 1`` ignores relevance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-10


def _check_kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"DPP kernel must be a square matrix, got shape {kernel.shape}")
    return kernel


def greedy_map(kernel: np.ndarray, max_length: int, *, epsilon: float = EPSILON) -> list[int]:
    """Greedy MAP of a DPP with kernel ``kernel``: indices in pick order (may stop early).

    Stops before ``max_length`` when no remaining item adds volume (gain below ``epsilon``),
    which happens once the picks span the rank of the kernel.
    """
    kernel = _check_kernel(kernel)
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    n_items = kernel.shape[0]
    max_length = min(max_length, n_items)
    if max_length == 0:
        return []
    cis = np.zeros((max_length, n_items))
    gains = np.copy(np.diag(kernel))
    selected = [int(np.argmax(gains))]
    while len(selected) < max_length:
        k = len(selected) - 1
        best = selected[-1]
        ci_best = cis[:k, best]
        di_best = math.sqrt(gains[best])
        eis = (kernel[best, :] - ci_best @ cis[:k, :]) / di_best
        cis[k, :] = eis
        gains -= np.square(eis)
        gains[best] = -np.inf
        nxt = int(np.argmax(gains))
        if gains[nxt] < epsilon:
            break
        selected.append(nxt)
    return selected


def greedy_map_window(
    kernel: np.ndarray, max_length: int, window: int, *, epsilon: float = EPSILON
) -> list[int]:
    """Sliding-window greedy MAP: each pick is diverse w.r.t. the last ``window`` picks."""
    kernel = _check_kernel(kernel)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    n_items = kernel.shape[0]
    max_length = min(max_length, n_items)
    if max_length == 0:
        return []
    v = np.zeros((max_length, max_length))
    cis = np.zeros((max_length, n_items))
    gains = np.copy(np.diag(kernel))
    selected = [int(np.argmax(gains))]
    left = 0
    while len(selected) < max_length:
        k = len(selected) - 1
        best = selected[-1]
        ci_best = cis[left:k, best]
        di_best = math.sqrt(gains[best])
        v[k, left:k] = ci_best
        v[k, k] = di_best
        eis = (kernel[best, :] - ci_best @ cis[left:k, :]) / di_best
        cis[k, :] = eis
        gains -= np.square(eis)
        if len(selected) >= window:
            # Drop the oldest pick from the window with Givens rotations (paper, Alg. 2).
            left += 1
            for ind in range(left, k + 1):
                t = math.sqrt(v[ind, ind] ** 2 + v[ind, left - 1] ** 2)
                c = t / v[ind, ind]
                s = v[ind, left - 1] / v[ind, ind]
                v[ind, ind] = t
                v[ind + 1 : k + 1, ind] += s * v[ind + 1 : k + 1, left - 1]
                v[ind + 1 : k + 1, ind] /= c
                v[ind + 1 : k + 1, left - 1] *= c
                v[ind + 1 : k + 1, left - 1] -= s * v[ind + 1 : k + 1, ind]
                cis[ind, :] += s * cis[left - 1, :]
                cis[ind, :] /= c
                cis[left - 1, :] *= c
                cis[left - 1, :] -= s * cis[ind, :]
            gains += np.square(cis[left - 1, :])
        gains[selected] = -np.inf
        nxt = int(np.argmax(gains))
        if gains[nxt] < epsilon:
            break
        selected.append(nxt)
    return selected


def similarity_from_vectors(vectors: np.ndarray) -> np.ndarray:
    """``S_ij = (1 + cos(v_i, v_j)) / 2``: in [0, 1], 1 on the diagonal, and PSD."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"item vectors must be 2-D [n, d], got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    return (1.0 + unit @ unit.T) / 2.0


def build_kernel(scores: np.ndarray, vectors: np.ndarray, theta: float) -> np.ndarray:
    """``L = diag(q) S diag(q)`` with ``q = exp(alpha * z)``, ``alpha = (1 - theta) / (2 theta)``.

    ``z`` are the scores min-max scaled to [0, 1] so ``theta`` means the same for any score
    scale (dot products, probabilities).
    """
    if not 0.0 < theta <= 1.0:
        raise ValueError(f"theta must be in (0, 1] to build a kernel, got {theta}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) != len(vectors):
        raise ValueError(
            f"scores must be 1-D with one entry per vector, got {scores.shape} vs {len(vectors)}"
        )
    span = scores.max() - scores.min() if len(scores) else 0.0
    scaled = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    alpha = (1.0 - theta) / (2.0 * theta)
    quality = np.exp(alpha * scaled)
    return quality[:, None] * similarity_from_vectors(vectors) * quality[None, :]


def dpp_rerank(
    scores: Sequence[float] | np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    theta: float = 0.5,
    window: int | None = None,
) -> list[int]:
    """Pick ``k`` distinct candidate indices balancing score and diversity.

    When greedy MAP stops early (the kernel's rank is below ``k``), the rest is filled in
    score order, so callers always get ``min(k, n)`` indices.
    """
    scores_arr = np.asarray(scores, dtype=np.float64)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not 0.0 <= theta <= 1.0:
        raise ValueError(f"theta must be in [0, 1], got {theta}")
    by_score = [int(i) for i in np.argsort(-scores_arr, kind="stable")]
    k = min(k, len(scores_arr))
    if theta == 0.0 or k == 0:
        return by_score[:k]
    kernel = build_kernel(scores_arr, vectors, theta)
    if window is None or window >= k:
        picked = greedy_map(kernel, k)
    else:
        picked = greedy_map_window(kernel, k, window)
    chosen = set(picked)
    picked.extend(i for i in by_score if i not in chosen)
    return picked[:k]


def mean_pairwise_distance(vectors: np.ndarray) -> float:
    """Mean cosine distance over distinct pairs: the diversity measure used in tests."""
    sim = similarity_from_vectors(vectors) * 2.0 - 1.0
    n = len(sim)
    if n < 2:
        return 0.0
    off_diagonal = sim[~np.eye(n, dtype=bool)]
    return float(np.mean(1.0 - off_diagonal))
