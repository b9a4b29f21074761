"""How well a solved curve generalises: its test-split accuracy against a reference curve at matched cost.

A curve is judged on the split it was not solved on, at the cost it really spends there (a threshold set
solved for budget b can spend more or less than b on new data), so curves are compared at equal realised
test GFLOPs, never budget by budget:

- A curve on the test split is the piecewise-linear line through its points (realised test GFLOPs,
  test accuracy) sorted by cost, starting from "everyone leaves at exit 1" (the cost of exit 1 and its
  accuracy, which any threshold set can deliver) and held flat after its most expensive point (a larger
  budget gets no more from it).
- The reference (normally the geometric schedule) is evaluated at its own points; the gap at each of
  them is `curve(reference cost) - reference accuracy`. Reported: mean gap, worst gap and the fraction of
  reference points where the gap is >= 0 ("at or above").
- Matching cost: the first cost at which a curve's line reaches the last exit's test accuracy (None:
  never), for the curve and for the reference.

Accuracies are fractions in [0, 1], gaps too (x100 for points of percent).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .curve import ThresholdCurve
from .evaluate import anytime_accuracy, evaluate_thresholds
from .scores import ExitScores

AT_OR_ABOVE_TOL = 1e-12  # gaps above -1e-12 count as "at or above" (float rounding of equal curves)


@dataclass(frozen=True)
class CurvePoints:
    """A curve's points on the test split, in the curve's budget order."""

    gflops: np.ndarray  # (B,) realised test GFLOPs per image
    accuracy: np.ndarray  # (B,) test accuracy


@dataclass(frozen=True)
class MatchedComparison:
    mean_gap: float  # mean over reference points of curve - reference (fraction, not %)
    worst_gap: float  # most negative gap
    fraction_at_or_above: float  # share of reference points with gap >= 0
    num_reference_points: int
    match_gflops: float | None  # first cost where the curve reaches the last exit's accuracy
    reference_match_gflops: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def points_on(curve: ThresholdCurve, test: ExitScores) -> CurvePoints:
    evals = [evaluate_thresholds(test, t) for t in curve.thresholds]
    return CurvePoints(np.array([e.expected_gflops for e in evals]), np.array([e.accuracy for e in evals]))


def curve_line(points: CurvePoints, test: ExitScores) -> tuple[np.ndarray, np.ndarray]:
    """(costs, accuracies) of the piecewise-linear line: exit 1's point, then the points by cost."""
    order = np.argsort(points.gflops, kind="stable")
    first_acc = float(anytime_accuracy(test.correct)[0])
    return (np.concatenate(([test.gflops[0]], points.gflops[order])),
            np.concatenate(([first_acc], points.accuracy[order])))


def accuracy_at(points: CurvePoints, test: ExitScores, gflops) -> np.ndarray:
    """The line's accuracy at the given realised costs (flat beyond its ends)."""
    x, y = curve_line(points, test)
    return np.interp(np.asarray(gflops, dtype=np.float64), x, y)


def matching_gflops(points: CurvePoints, test: ExitScores, target: float | None = None) -> float | None:
    """First cost at which the line reaches `target` (default: the last exit's test accuracy); None: never."""
    target = float(anytime_accuracy(test.correct)[-1]) if target is None else float(target)
    x, y = curve_line(points, test)
    hit = np.flatnonzero(y >= target - AT_OR_ABOVE_TOL)
    if hit.size == 0:
        return None
    j = int(hit[0])
    if j == 0 or y[j] <= target:
        return float(x[j])
    return float(x[j - 1] + (target - y[j - 1]) / (y[j] - y[j - 1]) * (x[j] - x[j - 1]))


def compare_matched_cost(points: CurvePoints, reference: CurvePoints, test: ExitScores) -> MatchedComparison:
    """`points` against `reference` at the reference's realised test costs (module docstring)."""
    gaps = accuracy_at(points, test, reference.gflops) - reference.accuracy
    return MatchedComparison(float(gaps.mean()), float(gaps.min()), float((gaps >= -AT_OR_ABOVE_TOL).mean()),
                             int(gaps.shape[0]), matching_gflops(points, test), matching_gflops(reference, test))
