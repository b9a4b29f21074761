"""Lookup tables over a grid of threshold sets: calibration accuracy, cost and exit counts of every set at once.

Shared by the genetic algorithm (its fitness) and the anchored solver (its search for a significantly
better set than the reference schedule), so that neither applies the exit rule sample by sample in a loop.

- Grid: one axis per exit 0..K-2. Index z of exit k picks a threshold from the candidate values of that
  exit: z = 0 is +inf (the exit is closed), z = j >= 1 is the j-th largest candidate. The candidates are
  the distinct calibration scores of that exit, thinned to values at evenly spaced ranks when there are
  more than `grid_size` of them (default: as many as keep the table at most `max_cells` cells, 2^21:
  every distinct score for K = 2, ~1447 per exit for K = 3, ~127 for K = 4).
- Tables: for every cell, the number of correct samples, the number leaving at each exit and the expected
  GFLOPs, built with multi-dimensional histograms and cumulative sums in O(N + cells) per exit; they equal
  what the exit rule gives for the cell's thresholds (tests check this). `weighted(w)` builds the same
  sum for any per-exit sample weights, e.g. how many samples a cell classifies differently from a given
  threshold set (the discordant pairs of a paired McNemar comparison).
"""
from __future__ import annotations

import numpy as np

from .scores import ExitScores

MAX_CELLS = 1 << 21


class ThresholdTables:
    """Candidate thresholds per exit and the accuracy / cost / exit counts of every grid cell."""

    def __init__(self, scores: ExitScores, grid_size: int | None = None, max_cells: int = MAX_CELLS):
        k_exits, n = scores.num_exits, scores.num_samples
        dims = k_exits - 1
        per_exit = grid_size or max(1, int(round(max_cells ** (1.0 / dims))) - 1)
        while (per_exit + 2) ** dims > 2 * max_cells and per_exit > 1:
            per_exit -= 1
        self.num_exits, self.n, self.gflops = k_exits, n, scores.gflops
        self.candidates = [candidate_grid(scores.scores[k], per_exit) for k in range(dims)]
        self.sizes = np.array([c.shape[0] for c in self.candidates])
        # level[k][i]: smallest index whose threshold sample i passes at exit k (size + 1: none)
        self.levels = [1 + c.shape[0] - np.searchsorted(c[::-1], scores.scores[k], side="right")
                       for k, c in enumerate(self.candidates)]
        self.shape = tuple(int(s) + 1 for s in self.sizes)
        self.counts = np.stack([self._exit_sum(k, None) for k in range(k_exits)])  # (K, *shape)
        self.correct = self.weighted(scores.correct)
        self.cost = np.tensordot(scores.gflops, self.counts, axes=1) / n  # expected GFLOPs per cell

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """Per cell: sum over samples of weights[exit of the sample under the cell's thresholds, sample].

        With P_k(cell) = [the sample passes no threshold of exits 0..k-1] (P_0 = 1), the sample leaves at
        exit k < K-1 with weight P_k - P_{k+1} and at the last exit with P_{K-1}, so the sum telescopes to
        sum(w_0) + sum_k sum_i (w_k - w_{k-1})(i) P_k(cell): K-1 suffix-count tables instead of K."""
        w = np.asarray(weights, dtype=np.float64)
        total = np.full(self.shape, int(round(w[0].sum())), dtype=np.int64)
        for k in range(1, self.num_exits):
            sums = _orthant_counts(self.levels[:k], self.sizes[:k], w[k] - w[k - 1], True)
            total += sums[(slice(None),) * k + (None,) * (self.num_exits - 1 - k)]
        return total

    def _exit_sum(self, k: int, weights) -> np.ndarray:
        """Per cell: sum of `weights` (None: 1) over the samples that leave at exit k."""
        last = k == self.num_exits - 1
        axes = self.levels[:k] if last else self.levels[:k + 1]
        sums = _orthant_counts(axes, self.sizes[:len(axes)], weights, last)
        pad = (slice(None),) * len(axes) + (None,) * (self.num_exits - 1 - len(axes))
        return np.broadcast_to(sums[pad], self.shape)

    def thresholds(self, index) -> np.ndarray:
        """The thresholds (K,) of the cell at `index` (one grid index per exit 0..K-2)."""
        t = [np.inf if z == 0 else float(c[z - 1]) for z, c in zip(index, self.candidates)]
        return np.array(t + [-np.inf])

    def cell(self, flat: int) -> tuple[int, ...]:
        return tuple(int(z) for z in np.unravel_index(int(flat), self.shape))


def candidate_grid(s: np.ndarray, size: int) -> np.ndarray:
    """Distinct scores in descending order, thinned to values at evenly spaced ranks if too many."""
    distinct = np.unique(s)[::-1]
    if distinct.shape[0] <= size:
        return distinct
    ranked = np.sort(s)[::-1]
    return np.unique(ranked[np.linspace(0, s.shape[0] - 1, size).round().astype(int)])[::-1]


def _orthant_counts(levels, sizes, weights, last: bool) -> np.ndarray:
    """Over grid indices z: sum of weights of samples with level_j > z_j for the leading axes and, unless
    `last`, level_k <= z_k on the final axis (the samples that leave exactly at that exit)."""
    dims = tuple(int(s) + 2 for s in sizes)
    flat = np.ravel_multi_index(tuple(levels), dims)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    hist = np.rint(np.bincount(flat, weights=w, minlength=int(np.prod(dims)))).astype(np.int64).reshape(dims)
    for axis, size in enumerate(sizes):
        cum = np.cumsum(hist, axis=axis)  # sum over level <= z
        keep = [slice(None)] * hist.ndim
        keep[axis] = slice(0, int(size) + 1)
        if last or axis < len(sizes) - 1:
            total = hist.sum(axis=axis, keepdims=True)
            hist = (total - cum)[tuple(keep)]  # level > z
        else:
            hist = cum[tuple(keep)]
    return hist
