"""Random exit, the paper's weakest criterion (Table 9): samples leave at random exits in fixed proportions.

The proportions are matched to a threshold set (normally the confidence criterion's solution at the same
budget), so random exit spends the same GFLOPs and only the choice of *which* samples leave differs.
Counts per exit are the proportions times N rounded by largest remainder (they sum to N); which samples
get which exit is a seeded random permutation.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .curve import ThresholdCurve
from .evaluate import Evaluation, evaluate_exits
from .scores import ExitScores


def exit_counts_for_fractions(n: int, fractions) -> np.ndarray:
    """Integer counts (K,) summing to n, proportional to `fractions` (largest-remainder rounding)."""
    f = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if f.size == 0 or not np.isfinite(f).all() or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"exit fractions must be finite, non-negative and not all zero, got {f.tolist()}")
    raw = f / f.sum() * n
    counts = np.floor(raw).astype(np.int64)
    short = n - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")  # largest remainders first, ties: earlier exit
    counts[order[:short]] += 1
    return counts


def random_exits(n: int, fractions, seed=0) -> np.ndarray:
    """A random exit index (N,) per sample with counts matched to `fractions`; `seed`: numpy seed or Generator."""
    counts = exit_counts_for_fractions(n, fractions)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(counts.shape[0]), counts))


def evaluate_random_exit(scores: ExitScores, fractions, seed=0) -> Evaluation:
    """Accuracy and cost of random exit with the given proportions on a split."""
    if len(fractions) != scores.num_exits:
        raise ValueError(f"need {scores.num_exits} exit fractions, got {len(fractions)}")
    return evaluate_exits(random_exits(scores.num_samples, fractions, seed), scores.correct, scores.gflops)


def random_exit_curve(curve: ThresholdCurve, scores: ExitScores, seed: int = 0) -> ThresholdCurve:
    """The random-exit counterpart of `curve`: the same exit fractions per point, evaluated on `scores`.

    Point j uses the seed [seed, j]. The thresholds are kept (they define the proportions).
    """
    evals = [evaluate_random_exit(scores, f, [seed, j]) for j, f in enumerate(curve.exit_fractions)]
    return dataclasses.replace(
        curve, criterion="random",
        accuracy=np.array([e.accuracy for e in evals]),
        expected_gflops=np.array([e.expected_gflops for e in evals]),
        exit_fractions=np.array([e.exit_fractions for e in evals]),
        info={**curve.info, "random_seed": seed, "exact": False})
