"""One interface over the three threshold solvers.

`solve(name, scores, budgets=None, **options) -> ThresholdCurve`, with `scores` the calibration split:

- "geometric": the reference's MSDNet-style 59-point schedule (`geometric.py`); it chooses its own
  budgets (budgets must be None), each point's budget being its calibration cost.
- "genetic": the paper's GA (`genetic.py`), seeded.
- "exact": the exact maximiser (`exact.py`); never less accurate than the other two on calibration at
  the same or a lower cost.
For "genetic" and "exact", `budgets` are average GFLOPs per image inside [cost of exit 1, cost of the
last exit]; the default is the geometric schedule's calibration costs, so the three curves line up.
"""
from __future__ import annotations

from typing import Callable

from .anchored import solve_anchored, solve_margin
from .curve import ThresholdCurve
from .exact import solve_exact
from .genetic import solve_genetic
from .geometric import solve_geometric
from .scores import ExitScores

DEFAULT_SOLVER = "anchored"  # the one that generalises best (tools/bench_thresholds.py, README)

SOLVERS: dict[str, Callable[..., ThresholdCurve]] = {
    "geometric": solve_geometric,
    "genetic": solve_genetic,
    "exact": solve_exact,
    "anchored": solve_anchored,
    "margin": solve_margin,
}


def solve(name: str, scores: ExitScores, budgets=None, **options) -> ThresholdCurve:
    if name not in SOLVERS:
        raise ValueError(f"unknown threshold solver {name!r}; choose from {sorted(SOLVERS)}")
    return SOLVERS[name](scores, budgets, **options)
