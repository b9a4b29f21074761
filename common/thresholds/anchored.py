"""Anchored solver: the reference's geometric schedule, left only where calibration shows a significant gain.

Why. An exact maximiser of calibration accuracy fits calibration noise (it picks the luckiest of ~10^6
threshold sets) and, where extra compute buys no calibration accuracy, leaves the budget unspent; on
held-out data it loses to the reference's geometric schedule at most budgets (DESIGN.md §10). The
geometric schedule is a one-parameter family with almost no variance, but it is not tuned to the model.
This solver keeps the family as the default (the anchor) and moves away from it only with evidence: a
safe-improvement rule, in the spirit of a one-sided paired test.

Per budget b (GFLOPs per image):
1. Anchor: the most expensive point of the geometric family whose calibration cost fits b. The family is
   the reference's exit fractions proportional to q^1..q^K for q = p / 20, p = 1..59, continued both ways
   (q = 1/80 and 1/40; q up to ~1000) and closed by "everyone at exit 1" and "everyone at the last exit",
   so an anchor exists for every valid budget; at the default budgets (the reference's own calibration
   costs) it is the reference's point for that budget and spends all of it.
2. Alternatives: every threshold set of the grid of `tables.ThresholdTables` whose calibration cost fits
   b. For each, the gain over the anchor in correct samples, G, and the number of samples the two
   classify differently (correct under one, wrong under the other), D: under "no real difference" G has
   mean 0 and standard deviation sqrt(D) (McNemar's paired comparison).
3. Choose the set with the largest lower confidence bound G - z sqrt(D) (ties: the costlier). It replaces
   the anchor only if that bound is positive; z = 4 by default because the bound is maximised over
   ~10^5 correlated sets: tools/bench_thresholds.py measured z = 2, 3, 4 on 12 synthetic sources, and
   noise passed z = 2 often and z = 3 once (a deviation 0.39 points below the reference on held-out
   data), z = 4 never.
   Since D >= |G|, no bound can be positive unless some G > z^2; such budgets skip step 2's table.
4. Spending never decreases along increasing budgets (a set cheaper than the previous point is not
   considered). Calibration accuracy may dip where the family dips by noise: forcing it up
   (`monotone=True`) trades family points for worse ones and costs test accuracy (measured).

The last exit's cost is always one of the budgets, so the curve always reaches the last exit's accuracy
at or below its cost (at the latest by sending everyone there). At run time the curve picks, among the
points whose calibration cost fits a budget, the one solved for the largest budget
(`ThresholdCurve.index_for_budget` with `info["select"] == "largest_budget"`): it spends what it is given.

`solve_margin` is the other way to spend the budget that was tried (a tie-break within z paired standard
deviations of the grid optimum, preferring the costliest set); it still fits calibration noise.
"""
from __future__ import annotations

import numpy as np

from .budgets import budget_slack, validate_budgets
from .curve import ThresholdCurve
from .evaluate import Evaluation, evaluate_thresholds
from .geometric import REFERENCE_DIVISOR, REFERENCE_POINTS, default_budgets, geometric_fractions, geometric_thresholds
from .rule import exit_indices
from .scores import ExitScores
from .tables import ThresholdTables

DEFAULT_Z = 4.0
DEFAULT_GRID = 384  # candidate thresholds per exit (K = 3: 148,225 threshold sets)


def solve_anchored(scores: ExitScores, budgets=None, *, z: float = DEFAULT_Z, grid_size: int | None = DEFAULT_GRID,
                   monotone: bool = False) -> ThresholdCurve:
    """Anchored thresholds for each budget (default: the geometric schedule's costs), plus the last exit's cost.

    `monotone`: also keep the calibration accuracy from decreasing along the budgets (measured: it costs test
    accuracy, because it trades the family's points for worse ones where the family dips by noise)."""
    return _solve("anchored", scores, budgets, z, grid_size, monotone)


def solve_margin(scores: ExitScores, budgets=None, *, z: float = 1.0, grid_size: int | None = DEFAULT_GRID,
                 monotone: bool = True) -> ThresholdCurve:
    """The spending tie-break of the grid optimum: per budget, among the grid's threshold sets whose
    calibration accuracy is within z paired standard deviations (sqrt of the discordant samples) of the most
    accurate set that fits, the costliest (ties: the more accurate). Kept for comparison; measured by
    tools/bench_thresholds.py, it generalises worse than "anchored" (README)."""
    return _solve("margin", scores, budgets, z, grid_size, monotone)


def _solve(rule: str, scores: ExitScores, budgets, z: float, grid_size, monotone: bool) -> ThresholdCurve:
    if not z >= 0:
        raise ValueError(f"z must be a non-negative number of standard deviations, got {z!r}")
    budgets = default_budgets(scores) if budgets is None else validate_budgets(budgets, scores.gflops)
    budgets = np.unique(np.append(budgets, scores.gflops[-1]))
    family = _Family(scores) if rule == "anchored" else None
    tables = ThresholdTables(scores, grid_size=grid_size)
    cells = _Cells(tables, scores)
    points, sources = [], []  # (thresholds, Evaluation) per budget
    for b in budgets:
        limit = b + budget_slack(b)
        prev = points[-1][1] if points else None
        ok = cells.feasible(limit, prev, monotone)
        if rule == "anchored":
            base, choose, label = family.anchor(limit, prev, monotone), cells.significant_gain, "anchor"
        else:
            base, choose, label = cells.best(ok), cells.costliest_close, "optimum"
        if base is None:  # nothing that fits keeps the curve monotone: stay at the previous point
            base, label = points[-1], "repeat"
        pick = choose(ok, base, z)
        if pick is None:
            points.append(base)
            sources.append(label)
        else:
            t = tables.thresholds(tables.cell(pick))
            points.append((t, evaluate_thresholds(scores, t)))
            sources.append("grid")
    info = {"exact": False, "z": float(z), "grid_size": [int(s) for s in tables.sizes], "monotone": monotone,
            "select": "largest_budget", "points_from_grid": sources.count("grid"),
            "points_repeated": sources.count("repeat"), "source": sources}
    return ThresholdCurve.from_thresholds(rule, scores, budgets, [t for t, _ in points], info=info,
                                          evaluations=[e for _, e in points])


class _Cells:
    """The grid's threshold sets as flat arrays, and the per-budget choices among them."""

    def __init__(self, tables: ThresholdTables, scores: ExitScores):
        self.tables, self.scores = tables, scores
        self.correct = tables.correct.reshape(-1)
        self.cost = tables.cost.reshape(-1)
        self.tiny = 1e-9 / scores.gflops[-1]  # a cost tie-break far below one sample's worth of accuracy

    def feasible(self, limit: float, prev, monotone: bool) -> np.ndarray:
        ok = self.cost <= limit
        if prev is not None:
            ok &= self.cost >= prev.expected_gflops  # spending never decreases along the budgets
            if monotone:
                ok &= self.correct >= prev.num_correct
        return ok

    def best(self, ok: np.ndarray):
        j = int(np.argmax(np.where(ok, self.correct + self.tiny * self.cost, -np.inf)))
        if not ok[j]:
            return None
        t = self.tables.thresholds(self.tables.cell(j))
        return t, evaluate_thresholds(self.scores, t)

    def discordant(self, thresholds) -> np.ndarray:
        """Per cell: samples correct under exactly one of the cell and `thresholds` (McNemar's b + c)."""
        s = self.scores
        right = s.correct[exit_indices(s.scores, thresholds), np.arange(s.num_samples)]
        return self.tables.weighted(s.correct != right[None, :]).reshape(-1)

    def significant_gain(self, ok: np.ndarray, base, z: float) -> int | None:
        """The cell with the largest lower bound gain - z sqrt(discordant) over `base`, if that is positive."""
        gain = np.where(ok, self.correct - base[1].num_correct, -1)
        if gain.max() <= z * z:  # discordant >= |gain|, so no bound can be positive: skip the table
            return None
        bound = gain - z * np.sqrt(self.discordant(base[0]))
        j = int(np.argmax(np.where(ok, bound + self.tiny * self.cost, -np.inf)))
        return j if ok[j] and bound[j] > 0 else None

    def costliest_close(self, ok: np.ndarray, base, z: float) -> int | None:
        """The costliest cell within z sqrt(discordant) correct samples of `base` (ties: more accurate)."""
        close = ok & (self.correct >= base[1].num_correct - z * np.sqrt(self.discordant(base[0])))
        j = int(np.argmax(np.where(close, self.cost + self.tiny * self.correct, -np.inf)))
        return j if close[j] and self.cost[j] > base[1].expected_gflops else None


def family_parameters(num_points: int = REFERENCE_POINTS, divisor: int = REFERENCE_DIVISOR) -> list[tuple[int, int]]:
    """(p, divisor) pairs of the anchor family, q = p / divisor ascending: q = 1/80 and 1/40, the reference's
    p = 1..59, then q growing by ~1.4x up to q ~ 1000 (99.9% of the samples reach the last exit of a
    three-exit cascade)."""
    high, p = [], num_points
    while p < 1000 * divisor:
        p = int(round(p * 1.4))
        high.append((p, divisor))
    return [(1, divisor * 4), (1, divisor * 2)] + [(p, divisor) for p in range(1, num_points + 1)] + high


class _Family:
    """The geometric family on the calibration scores, plus everyone-at-the-first / last-exit points."""

    def __init__(self, scores: ExitScores):
        k = scores.num_exits
        first = np.full(k, -np.inf)
        last = np.full(k, np.inf)
        last[-1] = -np.inf
        self.thresholds = np.stack([first] + [geometric_thresholds(scores.scores, geometric_fractions(p, k, d))
                                              for p, d in family_parameters()] + [last])
        # the exit rule for all points at once (F, N): the first exit whose threshold the score reaches
        exits = np.full((self.thresholds.shape[0], scores.num_samples), k - 1, dtype=np.int8)
        for j in range(k - 2, -1, -1):
            exits[scores.scores[j][None, :] >= self.thresholds[:, j, None]] = j
        self.correct = scores.correct[exits, np.arange(scores.num_samples)[None, :]].sum(axis=1)
        self.counts = np.stack([(exits == j).sum(axis=1) for j in range(k)], axis=1)
        self.cost = self.counts @ scores.gflops / scores.num_samples

    def anchor(self, limit: float, prev, monotone: bool):
        """(thresholds, Evaluation) of the costliest point that fits and keeps the curve monotone; None: none."""
        keep = self.cost <= limit
        if prev is not None:
            keep &= self.cost >= prev.expected_gflops
            if monotone:
                keep &= self.correct >= prev.num_correct
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return None
        j = int(idx[np.argmax(self.cost[idx])])
        counts = tuple(int(c) for c in self.counts[j])
        n = sum(counts)
        return self.thresholds[j].copy(), Evaluation(int(self.correct[j]) / n, float(self.cost[j]), counts,
                                                     int(self.correct[j]))
