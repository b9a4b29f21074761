"""The reference code's threshold schedule (MSDNet-style), so that published curves can be reproduced.

For p = 1..59 and q = p / 20, the planned fraction of samples leaving at exit k is q^(k+1) / sum_j q^(j+1)
(k = 0..K-1). Exits are visited in order; at exit k < K-1 the samples that have not left yet are sorted
by score (descending) and the threshold is the score of the floor(N * fraction_k)-th of them (1-based,
N = all calibration samples). If that count is 0 or larger than the number left, the exit stays closed
(+inf; the reference writes 1e8). Then every sample with score >= threshold leaves (so ties at the
threshold all leave, and more than planned may go). The last threshold is -inf.

One deliberate difference: the fractions are computed in exact rational arithmetic. The reference
computes them in float32, which can move floor(N * fraction) by one sample when N * fraction is an
integer or within float32 rounding of one (e.g. N = 111, p = 2 gives 99 instead of 100).
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np

from .budgets import validate_budgets
from .curve import ThresholdCurve
from .scores import ExitScores

REFERENCE_POINTS = 59
REFERENCE_DIVISOR = 20


def geometric_fractions(p: int, num_exits: int, divisor: int = REFERENCE_DIVISOR) -> list[Fraction]:
    """Planned exit fractions q^1..q^K, normalised, q = p / divisor (exact rationals)."""
    if p < 1 or divisor < 1:
        raise ValueError(f"p and divisor must be positive integers, got p={p}, divisor={divisor}")
    q = Fraction(p, divisor)
    powers = [q ** (k + 1) for k in range(num_exits)]
    total = sum(powers)
    return [w / total for w in powers]


def geometric_thresholds(scores: np.ndarray, fractions) -> np.ndarray:
    """The reference's thresholds (K,) for planned exit fractions, on scores (K, N)."""
    scores = np.asarray(scores, dtype=np.float64)
    k_exits, n = scores.shape
    thresholds = np.full(k_exits, np.inf)
    left = np.ones(n, dtype=bool)
    for k in range(k_exits - 1):
        out_n = math.floor(n * Fraction(fractions[k]))
        remaining = scores[k][left]
        if 1 <= out_n <= remaining.size:
            # the out_n-th largest remaining score
            thresholds[k] = np.partition(remaining, remaining.size - out_n)[remaining.size - out_n]
        left &= ~(scores[k] >= thresholds[k])
    thresholds[-1] = -np.inf
    return thresholds


def solve_geometric(scores: ExitScores, budgets=None, *, points: int = REFERENCE_POINTS,
                    divisor: int = REFERENCE_DIVISOR) -> ThresholdCurve:
    """The reference's `points`-point schedule on the calibration scores.

    The schedule chooses its own budgets: each point's budget is the cost it achieves on calibration.
    """
    if budgets is not None:
        raise ValueError("the geometric schedule chooses its own budgets (one per p = 1..points); "
                         "pass budgets=None and pick points with ThresholdCurve.thresholds_for_budget")
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    thresholds = [geometric_thresholds(scores.scores, geometric_fractions(p, scores.num_exits, divisor))
                  for p in range(1, points + 1)]
    curve = ThresholdCurve.from_thresholds("geometric", scores, np.zeros(points), thresholds,
                                           info={"points": points, "divisor": divisor, "exact": False})
    # budgets = achieved calibration costs
    return dataclasses.replace(curve, budgets=curve.expected_gflops.copy())


def default_budgets(scores: ExitScores) -> np.ndarray:
    """The budgets the other solvers use by default: the costs the geometric schedule achieves on
    `scores` (sorted, de-duplicated), so that the three curves are compared at the same budgets."""
    return validate_budgets(solve_geometric(scores).expected_gflops, scores.gflops)
