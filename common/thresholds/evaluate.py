"""Evaluating a threshold set (or any exit assignment) on stored per-exit outputs.

`evaluate_thresholds` applies the exit rule (`rule.exit_indices`) and reports top-1 accuracy, how many
samples leave at each exit, and the expected GFLOPs per image from the config's cumulative GFLOPs.
`anytime_accuracy` is the accuracy of each exit on its own (every sample forced through it).
Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .budgets import expected_gflops
from .rule import exit_indices
from .scores import ExitScores


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # fraction of samples classified correctly at the exit they leave at
    expected_gflops: float  # average cumulative GFLOPs per sample
    exit_counts: tuple[int, ...]  # samples leaving at each exit
    num_correct: int

    @property
    def num_samples(self) -> int:
        return int(sum(self.exit_counts))

    @property
    def exit_fractions(self) -> tuple[float, ...]:
        n = self.num_samples
        return tuple(c / n for c in self.exit_counts)


def evaluate_exits(exits: np.ndarray, correct: np.ndarray, gflops) -> Evaluation:
    """Evaluate an explicit assignment of samples to exits (N,) given per-exit correctness (K, N)."""
    correct = np.asarray(correct, dtype=bool)
    k, n = correct.shape
    exits = np.asarray(exits)
    if exits.shape != (n,):
        raise ValueError(f"exits must have shape ({n},), got {exits.shape}")
    if n == 0:
        raise ValueError("cannot evaluate an empty split")
    if exits.min() < 0 or exits.max() >= k:
        raise ValueError(f"exit indices must lie in [0, {k}), got range [{exits.min()}, {exits.max()}]")
    counts = np.bincount(exits, minlength=k)
    n_correct = int(correct[exits, np.arange(n)].sum())
    return Evaluation(n_correct / n, expected_gflops(counts, gflops), tuple(int(c) for c in counts), n_correct)


def evaluate_thresholds(scores: ExitScores, thresholds) -> Evaluation:
    """Accuracy, exit counts and expected GFLOPs of `thresholds` under the exit rule."""
    return evaluate_exits(exit_indices(scores.scores, thresholds), scores.correct, scores.gflops)


def anytime_accuracy(correct: np.ndarray) -> np.ndarray:
    """Accuracy of every exit on all samples, (K,) — the single-exit points of the budget curves."""
    return np.asarray(correct, dtype=bool).mean(axis=1)
