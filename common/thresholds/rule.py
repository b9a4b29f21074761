"""The exit rule, written once and used everywhere.

A sample leaves the cascade at the first exit k whose score is at least that exit's threshold,
`score_k >= threshold_k`; the last exit takes every sample that is still there, whatever its threshold
(stored as -inf). A threshold of +inf closes an exit. This is the reference code's rule (`>=`, last
threshold -1e8), and the early-exit inference of both frameworks must agree with `exit_mask`.
"""
from __future__ import annotations

import numpy as np


def exit_thresholds(thresholds, num_exits: int) -> np.ndarray:
    """Normalise a threshold set to shape (K,) float64 with the last entry -inf.

    Accepts K-1 values (the last exit's is implied) or K values (the last is ignored and set to -inf).
    """
    t = np.array(thresholds, dtype=np.float64).reshape(-1)
    if t.shape[0] == num_exits - 1:
        t = np.append(t, -np.inf)
    if t.shape[0] != num_exits:
        raise ValueError(f"a {num_exits}-exit cascade needs {num_exits - 1} or {num_exits} thresholds, "
                         f"got {t.shape[0]}")
    if np.isnan(t).any():
        raise ValueError(f"thresholds contain NaN: {t.tolist()}")
    t[-1] = -np.inf
    return t


def exit_mask(scores_k: np.ndarray, thresholds, k: int) -> np.ndarray:
    """Which samples that reached exit k leave there: `scores_k >= T_k`, or all of them at the last exit."""
    t = np.asarray(thresholds, dtype=np.float64)
    if k == t.shape[0] - 1:
        return np.ones(np.shape(scores_k), dtype=bool)
    return np.asarray(scores_k) >= t[k]


def exit_indices(scores: np.ndarray, thresholds) -> np.ndarray:
    """The exit (0..K-1) at which each sample leaves, for scores (K, N): first k with score >= T_k."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (K, N), got {scores.shape}")
    k_exits = scores.shape[0]
    t = exit_thresholds(thresholds, k_exits)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; the exit rule is undefined for them")
    exits = np.full(scores.shape[1], k_exits - 1, dtype=np.int64)
    for k in range(k_exits - 2, -1, -1):  # backwards, so the first passing exit wins
        exits[exit_mask(scores[k], t, k)] = k
    return exits
