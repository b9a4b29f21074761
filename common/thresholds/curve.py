"""`ThresholdCurve`: thresholds for a range of budgets, stored with a model and used at run time.

A curve is data, not code: per budget point it holds the thresholds (K values, last -inf), and what
they achieved on the calibration split (accuracy, expected GFLOPs, fraction of samples leaving at each
exit). `to_dict`/`from_dict` give plain JSON-able dicts (+/-inf written as the strings "inf"/"-inf"),
so a curve can sit in a checkpoint next to the weights. At run time `thresholds_for_budget(gflops)`
returns the most accurate point whose calibration cost fits the budget (or, for solvers that spend their
budget, the point solved for the largest budget that fits): the budget can change online without solving
again.

For the "random" criterion the thresholds are those of the confidence criterion whose exit fractions the
random policy copies; apply it with `fractions_for_budget` and `random_exit.random_exits`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .budgets import within_budget
from .evaluate import Evaluation, evaluate_thresholds
from .outputs import validate_gflops
from .rule import exit_thresholds
from .scores import ExitScores, check_criterion

CURVE_FORMAT = "dvt-threshold-curve"
CURVE_VERSION = 1
PREFERRED_SOLVERS = ("anchored", "exact")  # a results file without "default_solver" (older runs): first found


@dataclass(frozen=True, eq=False)
class ThresholdCurve:
    solver: str  # "geometric", "genetic", "exact", ...
    criterion: str  # "confidence", "entropy" or "random"
    gflops: np.ndarray  # (K,) cumulative GFLOPs of the exits the curve was solved for
    budgets: np.ndarray  # (B,) budget (GFLOPs) each point was solved for
    thresholds: np.ndarray  # (B, K); last column -inf; +inf closes an exit
    accuracy: np.ndarray  # (B,) calibration accuracy in [0, 1]
    expected_gflops: np.ndarray  # (B,) calibration cost, <= budgets
    exit_fractions: np.ndarray  # (B, K) calibration fraction of samples leaving at each exit
    info: dict = field(default_factory=dict)  # JSON-able extras (calibration size, seed, solver options)

    def __post_init__(self) -> None:
        check_criterion(self.criterion)
        g = validate_gflops(self.gflops, np.asarray(self.gflops).shape[0], f"{self.solver} curve")
        b = np.asarray(self.budgets, dtype=np.float64).reshape(-1)
        npts, k = b.shape[0], g.shape[0]
        th = np.asarray(self.thresholds, dtype=np.float64)
        if th.shape != (npts, k):
            raise ValueError(f"{self.solver} curve: thresholds must have shape ({npts}, {k}), got {th.shape}")
        th = np.stack([exit_thresholds(row, k) for row in th]) if npts else th
        arrays = {}
        for name, shape in (("accuracy", (npts,)), ("expected_gflops", (npts,)), ("exit_fractions", (npts, k))):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.shape != shape:
                raise ValueError(f"{self.solver} curve: {name} must have shape {shape}, got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{self.solver} curve: {name} contains NaN or infinity")
            arrays[name] = a
        for name, value in dict(gflops=g, budgets=b, thresholds=th, **arrays).items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "info", dict(self.info))

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_thresholds(cls, solver: str, scores: ExitScores, budgets, thresholds, info: dict | None = None,
                        evaluations: list[Evaluation] | None = None) -> "ThresholdCurve":
        """Build a curve by evaluating each threshold set with the exit rule on `scores` (calibration)."""
        rows = [exit_thresholds(t, scores.num_exits) for t in thresholds]
        evals = evaluations or [evaluate_thresholds(scores, t) for t in rows]
        k = scores.num_exits
        return cls(solver=solver, criterion=scores.criterion, gflops=scores.gflops,
                   budgets=np.asarray(budgets, dtype=np.float64),
                   thresholds=np.array(rows).reshape(len(rows), k),
                   accuracy=np.array([e.accuracy for e in evals]),
                   expected_gflops=np.array([e.expected_gflops for e in evals]),
                   exit_fractions=np.array([e.exit_fractions for e in evals]).reshape(len(rows), k),
                   info={"num_calibration": scores.num_samples, **(info or {})})

    # ---- run time ----------------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        return self.budgets.shape[0]

    @property
    def num_exits(self) -> int:
        return self.gflops.shape[0]

    def index_for_budget(self, gflops: float) -> int:
        """The point with the best calibration accuracy whose calibration cost fits `gflops` (ties: the
        cheaper point); for a curve whose info says `"select": "largest_budget"` (a solver that spends its
        budget, e.g. "anchored"), the fitting point solved for the largest budget (ties: the costlier).
        Raises ValueError when no point fits."""
        budget = float(gflops)
        if not math.isfinite(budget):
            raise ValueError(f"budget must be a finite number of GFLOPs, got {gflops!r}")
        fits = np.flatnonzero(within_budget(self.expected_gflops, budget))
        if fits.size == 0:
            cheapest = float(self.expected_gflops.min()) if self.num_points else float("nan")
            raise ValueError(f"no point of this {self.solver} curve fits a budget of {budget:.6g} GFLOPs "
                             f"(its cheapest point costs {cheapest:.6g} GFLOPs)")
        if self.info.get("select") == "largest_budget":
            order = np.lexsort((-self.expected_gflops[fits], -self.budgets[fits]))
        else:
            order = np.lexsort((self.expected_gflops[fits], -self.accuracy[fits]))
        return int(fits[order[0]])

    def thresholds_for_budget(self, gflops: float) -> np.ndarray:
        """Thresholds (K,) to apply under an average budget of `gflops` per image."""
        return self.thresholds[self.index_for_budget(gflops)].copy()

    def fractions_for_budget(self, gflops: float) -> np.ndarray:
        """Exit fractions (K,) of that point (what the random-exit policy applies)."""
        return self.exit_fractions[self.index_for_budget(gflops)].copy()

    # ---- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": CURVE_FORMAT, "version": CURVE_VERSION,
            "solver": self.solver, "criterion": self.criterion,
            "gflops": self.gflops.tolist(),
            "budgets": self.budgets.tolist(),
            "thresholds": [[_encode(v) for v in row] for row in self.thresholds],
            "accuracy": self.accuracy.tolist(),
            "expected_gflops": self.expected_gflops.tolist(),
            "exit_fractions": self.exit_fractions.tolist(),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ThresholdCurve":
        if not isinstance(data, dict):
            raise ValueError(f"a threshold curve is a dict, got {type(data).__name__}")
        if data.get("format", CURVE_FORMAT) != CURVE_FORMAT:
            raise ValueError(f"not a threshold curve (format {data.get('format')!r})")
        if int(data.get("version", CURVE_VERSION)) > CURVE_VERSION:
            raise ValueError(f"threshold curve version {data['version']} is newer than this code ({CURVE_VERSION})")
        missing = [k for k in ("solver", "criterion", "gflops", "budgets", "thresholds", "accuracy",
                               "expected_gflops", "exit_fractions") if k not in data]
        if missing:
            raise ValueError(f"threshold curve dict lacks {missing}")
        k = len(data["gflops"])
        th = np.array([[_decode(v) for v in row] for row in data["thresholds"]], dtype=np.float64)
        return cls(solver=str(data["solver"]), criterion=str(data["criterion"]),
                   gflops=np.asarray(data["gflops"], dtype=np.float64),
                   budgets=np.asarray(data["budgets"], dtype=np.float64),
                   thresholds=th.reshape(len(data["thresholds"]), k),
                   accuracy=np.asarray(data["accuracy"], dtype=np.float64),
                   expected_gflops=np.asarray(data["expected_gflops"], dtype=np.float64),
                   exit_fractions=np.asarray(data["exit_fractions"], dtype=np.float64).reshape(-1, k),
                   info=dict(data.get("info", {})))


    @classmethod
    def load(cls, source, solver: str | None = None) -> "ThresholdCurve":
        """The curve of a run: `source` is a run folder (its thresholds.json), a thresholds.json file, or an
        already parsed results dict (thresholds.json, or a checkpoint's extras {"thresholds": {solver: curve},
        "default_solver": ...}). `solver` None: the run's "default_solver", the one that generalises best."""
        if isinstance(source, dict):
            return curve_from_results(source, solver)
        path = Path(source)
        if path.is_dir():
            path = path / "thresholds.json"
        if not path.is_file():
            raise FileNotFoundError(f"no thresholds at {source} (expected a run folder with thresholds.json, "
                                    "or a thresholds.json file)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable thresholds.json ({e})") from e
        try:
            return curve_from_results(data, solver)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def curve_from_results(results: dict, solver: str | None = None) -> ThresholdCurve:
    """One solver's curve from a thresholds.json dict or checkpoint extras (see `ThresholdCurve.load`)."""
    if not isinstance(results, dict):
        raise ValueError(f"threshold results are a dict, got {type(results).__name__}")
    results = {k: _json_value(v) for k, v in results.items()}  # MindSpore checkpoints keep extras as JSON text
    if isinstance(results.get("solvers"), dict):
        curves = {n: s.get("curve") for n, s in results["solvers"].items() if isinstance(s, dict)}
    elif isinstance(results.get("thresholds"), dict):
        curves = dict(results["thresholds"])
    else:
        raise ValueError("no solved curves: expected a 'solvers' (thresholds.json) or 'thresholds' "
                         "(checkpoint extras) mapping")
    if not curves:
        raise ValueError("the results hold no solved curve (single-exit model?)")
    if solver is None:
        solver = results.get("default_solver") or next((n for n in PREFERRED_SOLVERS if n in curves), next(iter(curves)))
    if solver not in curves:
        raise ValueError(f"no {solver!r} curve; the results hold {sorted(curves)}")
    return ThresholdCurve.from_dict(curves[solver])


def _json_value(v):
    if isinstance(v, (str, bytes)):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _encode(v: float):
    return "inf" if v == math.inf else "-inf" if v == -math.inf else float(v)


def _decode(v) -> float:
    if isinstance(v, str):
        if v not in ("inf", "-inf", "Infinity", "-Infinity"):
            raise ValueError(f"bad threshold value {v!r}")
        return math.inf if not v.startswith("-") else -math.inf
    return float(v)
