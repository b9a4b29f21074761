"""Compute budgets (average GFLOPs per image): validation, grids, and the one feasibility test.

A threshold set meets a budget B when its expected GFLOPs (average over the samples of the
cumulative GFLOPs of the exit each one leaves at) is at most B. Every solver and test uses
`within_budget`, whose relative slack of 1e-9 only absorbs floating-point rounding, so that a set whose
cost equals the budget in exact arithmetic is feasible in all of them.
"""
from __future__ import annotations

import numpy as np

BUDGET_RTOL = 1e-9


def budget_slack(budget):
    """Absolute tolerance added to a budget (relative 1e-9, at least 1e-9)."""
    return BUDGET_RTOL * np.maximum(np.abs(budget), 1.0)


def within_budget(cost, budget):
    """`cost <= budget` up to floating-point rounding (elementwise for arrays)."""
    return np.asarray(cost) <= np.asarray(budget) + budget_slack(budget)


def validate_budgets(budgets, gflops) -> np.ndarray:
    """Budgets as a sorted, de-duplicated float64 array inside [cost of exit 1, cost of last exit].

    Raises ValueError for an empty list, non-numbers, NaN/inf, or any budget outside that range (no
    threshold set can spend less than every sample stopping at exit 1, and spending more than the last
    exit buys nothing).
    """
    g = np.asarray(gflops, dtype=np.float64)
    try:
        b = np.array(budgets, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"budgets must be numbers (GFLOPs), got {budgets!r}") from e
    if b.size == 0:
        raise ValueError("no budgets given")
    if not np.isfinite(b).all():
        raise ValueError(f"budgets must be finite GFLOPs, got {b[~np.isfinite(b)].tolist()}")
    lo, hi = g[0], g[-1]
    bad = (b < lo - budget_slack(lo)) | (b > hi + budget_slack(hi))
    if bad.any():
        raise ValueError(
            f"budget(s) {b[bad].tolist()} GFLOPs outside [{lo:.6g}, {hi:.6g}] = [cost of exit 1, cost of the "
            f"last exit]; every budget must lie in this range")
    return np.unique(np.clip(b, lo, hi))


def budget_grid(gflops, num: int) -> np.ndarray:
    """`num` evenly spaced budgets from the cost of exit 1 to the cost of the last exit."""
    if num < 1:
        raise ValueError(f"a budget grid needs at least 1 point, got {num}")
    g = np.asarray(gflops, dtype=np.float64)
    return np.linspace(g[0], g[-1], num)


def expected_gflops(exit_counts, gflops) -> float:
    """Average cumulative GFLOPs per sample for the given number of samples leaving at each exit."""
    counts = np.asarray(exit_counts, dtype=np.float64)
    return float(counts @ np.asarray(gflops, dtype=np.float64) / counts.sum())
