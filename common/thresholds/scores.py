"""Exit criteria: the per-exit score that the exit rule compares with a threshold.

Every criterion gives a confidence-like score (higher = more sure), so a single rule serves them all:
a sample leaves at the first exit k with `score_k >= threshold_k` (see `rule.py`).

- "confidence": the maximum softmax probability, computed in float64 from logits as
  `1 / sum_c exp(l_c - max_c l)` (exact and overflow-free), in (1/C, 1]. This is DVT's criterion.
- "entropy": `1 - H(p) / log C` with H the Shannon entropy of the softmax (natural log), in [0, 1]:
  1 for a one-hot prediction, 0 for the uniform one. Exiting when it is >= T is exiting when the
  normalised entropy is <= 1 - T.
- "random": no score; samples leave at random exits in proportions matched to a threshold set of the
  confidence criterion (paper Table 9). Solve with "confidence", then `random_exit.random_exit_curve`.

`ExitScores` bundles what every solver needs: the scores (K, N) of a scored criterion, whether each
exit's prediction is correct (K, N), and the cumulative GFLOPs of each exit (K,).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .outputs import ExitOutputs, validate_gflops

CRITERIA = ("confidence", "entropy", "random")
SCORED_CRITERIA = ("confidence", "entropy")
_ROWS = 8192  # samples per chunk when converting logits (bounds float64 temporaries)


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown exit criterion {criterion!r}; choose one of {list(CRITERIA)}")
    return criterion


def _check_scored(criterion: str) -> None:
    check_criterion(criterion)
    if criterion not in SCORED_CRITERIA:
        raise ValueError(f"the {criterion!r} criterion has no score; solve thresholds with 'confidence' and "
                         "evaluate random exit with random_exit.random_exit_curve / evaluate_random_exit")


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability over the last axis, in float64, stable for any finite logits."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=-1)


def entropy_score(logits: np.ndarray) -> np.ndarray:
    """`1 - H(softmax) / log C` over the last axis, in float64 (1: one-hot, 0: uniform)."""
    x = np.asarray(logits, dtype=np.float64)
    c = x.shape[-1]
    if c < 2:
        raise ValueError(f"the entropy criterion needs at least 2 classes, got {c}")
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    z = e.sum(axis=-1, keepdims=True)
    p = e / z
    log_p = shifted - np.log(z)
    h = -(p * log_p).sum(axis=-1)  # p * log p -> 0 where p underflows to 0
    return np.clip(1.0 - h / np.log(c), 0.0, 1.0)


def exit_scores(logits: np.ndarray, criterion: str = "confidence") -> np.ndarray:
    """Scores (K, N) float64 of `criterion` from logits (K, N, C), computed in chunks of samples."""
    _check_scored(criterion)
    fn = entropy_score if criterion == "entropy" else max_softmax
    k, n, _ = logits.shape
    out = np.empty((k, n), dtype=np.float64)
    for start in range(0, n, _ROWS):
        out[:, start:start + _ROWS] = fn(logits[:, start:start + _ROWS])
    return out


def exit_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether each exit's top-1 prediction is right, (K, N) bool (ties: first class, as argmax)."""
    return logits.argmax(axis=-1) == np.asarray(labels)[None, :]


@dataclass(frozen=True, eq=False)
class ExitScores:
    """Per-exit scores, correctness and cumulative GFLOPs of one split: all a solver needs."""

    scores: np.ndarray  # (K, N) float64, higher = more confident
    correct: np.ndarray  # (K, N) bool
    gflops: np.ndarray  # (K,) float64, cumulative, strictly increasing
    criterion: str = "confidence"  # "confidence" or "entropy"

    def __post_init__(self) -> None:
        _check_scored(self.criterion)
        scores = np.asarray(self.scores, dtype=np.float64)
        correct = np.asarray(self.correct)
        if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 1:
            raise ValueError(
                f"scores must have shape (exits K >= 2, samples N >= 1), got {scores.shape}")
        if correct.shape != scores.shape:
            raise ValueError(f"correct must have the shape of scores {scores.shape}, got {correct.shape}")
        if correct.dtype != np.bool_:
            if not np.isin(correct, (0, 1)).all():
                raise ValueError("correct must be boolean (or 0/1)")
            correct = correct.astype(bool)
        if not np.isfinite(scores).all():
            k, i = np.argwhere(~np.isfinite(scores))[0]
            raise ValueError(f"scores contain NaN or infinity (first at exit {k}, sample {i})")
        gflops = validate_gflops(self.gflops, scores.shape[0])
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "gflops", gflops)

    @classmethod
    def from_outputs(cls, outputs: ExitOutputs, criterion: str = "confidence", indices=None) -> "ExitScores":
        """Scores of `criterion` ("confidence" or "entropy") for all samples or for `indices`."""
        _check_scored(criterion)
        if outputs.num_exits < 2:
            raise ValueError(f"thresholds need at least 2 exits, the outputs have {outputs.num_exits}")
        logits, labels = outputs.logits, outputs.labels
        if indices is not None:
            idx = np.asarray(indices)
            logits, labels = logits[:, idx], labels[idx]
        return cls(exit_scores(logits, criterion), exit_correct(logits, labels), outputs.gflops, criterion)

    @property
    def num_exits(self) -> int:
        return self.scores.shape[0]

    @property
    def num_samples(self) -> int:
        return self.scores.shape[1]

    def subset(self, indices) -> "ExitScores":
        idx = np.asarray(indices)
        return ExitScores(self.scores[:, idx], self.correct[:, idx], self.gflops, self.criterion)
