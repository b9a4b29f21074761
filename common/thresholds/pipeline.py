"""Calibration outputs + test outputs -> solved curves, test-split evaluation, thresholds.json and plots.

The one threshold pipeline of the project: `tools/solve_thresholds.py`, `torch_impl/train.py`,
`torch_impl/evaluate.py` and their MindSpore twins all call `run_thresholds`, so every run reports
its thresholds, budget curves and plots the same way.

    result = run_thresholds(calib_outputs, test_outputs, "out/", ThresholdOptions(solvers=("exact",)))

`result` is what `thresholds.json` holds (format "dvt-threshold-results", version 1): the split
description, single-exit ("anytime") accuracy on both splits, the budgets, `default_solver` (the curve
that `ThresholdCurve.load(run folder)` and so `forward_adaptive(x, curve, budget=...)` users get), and
per solver its curve (`ThresholdCurve.to_dict`, calibration numbers), solve time and the test-split
accuracy, expected GFLOPs and exit counts/fractions of every point; plus a `table` aligning the solvers
budget by budget.
Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_text

from .budgets import budget_grid, validate_budgets
from .curve import ThresholdCurve
from .evaluate import anytime_accuracy, evaluate_thresholds
from .geometric import default_budgets
from .outputs import ExitOutputs
from .random_exit import evaluate_random_exit, random_exit_curve
from .scores import CRITERIA, ExitScores
from .solvers import DEFAULT_SOLVER, SOLVERS, solve

RESULTS_FORMAT = "dvt-threshold-results"
DEFAULT_SOLVERS = (DEFAULT_SOLVER, "exact", "genetic", "geometric")  # what train.py / evaluate.py solve
DEFAULT_SOLVERS_TEXT = ",".join(DEFAULT_SOLVERS)
THRESHOLD_FILES = ("thresholds.json", "accuracy_vs_gflops.png", "accuracy_vs_gflops_calibration.png",
                   "exit_counts.png")


class ThresholdOptionError(ValueError):
    """An option of the threshold pipeline that cannot be used (bad solver list, budgets, ...)."""


@dataclass(frozen=True)
class ThresholdOptions:
    """What to solve: solvers, exit criterion, budgets ('geometric' | 'grid:N' | 'a,b,c'), GA and exact knobs."""

    solvers: tuple[str, ...] = DEFAULT_SOLVERS
    criterion: str = "confidence"
    budgets: str = "geometric"
    seed: int = 0
    ga_population: int | None = None
    ga_generations: int | None = None
    exact_outer_candidates: int | None = 256  # None: fully exact search (4+ exits only)


def parse_solvers(text: str) -> tuple[str, ...]:
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    unknown = [s for s in names if s not in SOLVERS]
    if not names or unknown:
        raise ThresholdOptionError(f"--solvers: unknown or empty {unknown or text!r}; choose from {','.join(SOLVERS)}")
    if len(set(names)) != len(names):
        raise ThresholdOptionError(f"--solvers lists a solver twice: {text!r}")
    return tuple(names)


def parse_budgets(text: str, calib: ExitScores) -> np.ndarray:
    text = text.strip()
    if text == "geometric":
        return default_budgets(calib)
    if text.startswith("grid:"):
        try:
            num = int(text[5:])
        except ValueError:
            raise ThresholdOptionError(f"--budgets grid:N needs an integer N, got {text!r}") from None
        if num < 1:
            raise ThresholdOptionError(f"--budgets grid:N needs N >= 1, got {num}")
        return validate_budgets(budget_grid(calib.gflops, num), calib.gflops)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ThresholdOptionError(
            f"--budgets: expected 'geometric', 'grid:N' or comma-separated numbers, got {text!r}") from None
    try:
        return validate_budgets(values, calib.gflops)
    except ValueError as e:
        raise ThresholdOptionError(f"--budgets: {e}") from None


def parse_outer(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise ThresholdOptionError(f"--exact-outer-candidates must be an integer >= 2 or 'all', got {text!r}")
    return value


def default_solver_of(names) -> str:
    """The curve a run's users get (`thresholds.json` "default_solver"): the project's default solver if it
    was solved, else the first solver listed."""
    names = list(names)
    return DEFAULT_SOLVER if DEFAULT_SOLVER in names else names[0]


def solve_all(calib: ExitScores, budgets, options: ThresholdOptions) -> dict[str, tuple[ThresholdCurve, float]]:
    """name -> (curve solved on `calib`, seconds)."""
    curves = {}
    for name in options.solvers:
        kwargs = {}
        if name == "genetic":
            kwargs["seed"] = options.seed
            if options.ga_population is not None:
                kwargs["population"] = options.ga_population
            if options.ga_generations is not None:
                kwargs["generations"] = options.ga_generations
        if name == "exact":
            kwargs["max_outer_candidates"] = options.exact_outer_candidates
        start = time.perf_counter()
        curve = solve(name, calib, None if name == "geometric" else budgets, **kwargs)
        if options.criterion == "random":
            curve = random_exit_curve(curve, calib, options.seed)
        curves[name] = (curve, time.perf_counter() - start)
    return curves


def evaluate_on(curve: ThresholdCurve, scores: ExitScores, seed: int):
    """Every point of `curve` applied to `scores` (the test split): a list of `Evaluation`."""
    if curve.criterion == "random":
        return [evaluate_random_exit(scores, f, [seed, j]) for j, f in enumerate(curve.exit_fractions)]
    return [evaluate_thresholds(scores, t) for t in curve.thresholds]


def table_rows(budgets, curves, tests) -> list[dict]:
    rows = []
    for b in budgets:
        row = {"budget": float(b)}
        for name, (curve, _) in curves.items():
            try:
                j = curve.index_for_budget(b)
            except ValueError:
                row[name] = None
                continue
            row[name] = {"point": j, "calibration_accuracy": float(curve.accuracy[j]),
                         "calibration_gflops": float(curve.expected_gflops[j]),
                         "test_accuracy": tests[name][j].accuracy, "test_gflops": tests[name][j].expected_gflops}
        rows.append(row)
    return rows


def format_table(rows, names, single) -> str:
    head1 = f"{'budget':>8} |" + "|".join(f"{n:^25}" for n in names)
    head2 = f"{'GFLOPs':>8} |" + "|".join(f"{'cal %':>8}{'test %':>8}{'test GF':>9}" for _ in names)
    lines = [head1, head2, "-" * len(head2)]
    for row in rows:
        cells = []
        for n in names:
            r = row[n]
            if r is None:
                cells.append(f"{'-':>8}{'-':>8}{'-':>9}")
            else:
                cal, test = 100 * r["calibration_accuracy"], 100 * r["test_accuracy"]
                cells.append(f"{cal:8.2f}{test:8.2f}{r['test_gflops']:9.4f}")
        lines.append(f"{row['budget']:8.4f} |" + "|".join(cells))
    gf, cal, test = single
    lines.append("single exits (GFLOPs: calibration % / test %): " +
                 ", ".join(f"{g:.4f}: {100 * a:.2f}/{100 * b:.2f}" for g, a, b in zip(gf, cal, test)))
    return "\n".join(lines)


def write_results(out: Path, result: dict, curves, tests, calib_scores: ExitScores, test_scores: ExitScores,
                  title: str, grids=None, baselines: dict | None = None) -> None:
    """Render THRESHOLD_FILES into a staging directory, then move them into `out` (no partial output).

    A missing `out` is created by the move; in an existing one only THRESHOLD_FILES are replaced.
    """
    from .plots import plot_accuracy_vs_gflops, plot_exit_counts

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ThresholdOptionError(f"--out {out} exists and is not a directory")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise ThresholdOptionError(f"--out {out}: parent directory {parent} does not exist")
    staging = parent / f".{out.name}.staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        atomic_write_text(staging / "thresholds.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
        gf = calib_scores.gflops
        plot_accuracy_vs_gflops(staging / "accuracy_vs_gflops.png",
                                {n: ([e.expected_gflops for e in tests[n]], [e.accuracy for e in tests[n]])
                                 for n in curves},
                                (gf, anytime_accuracy(test_scores.correct)), f"{title} — test split",
                                grids=grids, baselines=baselines)
        plot_accuracy_vs_gflops(staging / "accuracy_vs_gflops_calibration.png",
                                {n: (c.expected_gflops, c.accuracy) for n, (c, _) in curves.items()},
                                (gf, anytime_accuracy(calib_scores.correct)), f"{title} — calibration split",
                                grids=grids)
        plot_exit_counts(staging / "exit_counts.png",
                         {n: (c.budgets, np.array([e.exit_counts for e in tests[n]])) for n, (c, _) in curves.items()},
                         f"{title} — samples leaving at each exit per budget (test split)")
        if not out.exists():
            staging.rename(out)
            return
        for name in THRESHOLD_FILES:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_thresholds(calib_out: ExitOutputs, test_out: ExitOutputs, out_dir,
                   options: ThresholdOptions = ThresholdOptions(), split: dict | None = None,
                   verbose: bool = True, grids=None, baselines: dict | None = None) -> dict:
    """Solve on `calib_out`, evaluate on `test_out`, write THRESHOLD_FILES into `out_dir`; return the result.

    `split` describes where the two splits came from (merged into the result's "calibration"/"test").
    `grids` (token grid per exit) and `baselines` (name -> (GFLOPs, test accuracy) of single-exit backbones)
    only label the accuracy-vs-GFLOPs plots.
    """
    if calib_out.num_exits < 2:
        raise ThresholdOptionError(f"thresholds need at least 2 exits, the outputs have {calib_out.num_exits}")
    if (test_out.num_exits, test_out.num_classes) != (calib_out.num_exits, calib_out.num_classes):
        raise ThresholdOptionError(f"test outputs have {test_out.num_exits} exits x {test_out.num_classes} classes, "
                                   f"calibration outputs {calib_out.num_exits} x {calib_out.num_classes}")
    if options.criterion not in CRITERIA:
        raise ThresholdOptionError(f"criterion must be one of {CRITERIA}, got {options.criterion!r}")
    parse_solvers(",".join(options.solvers))
    scored = "confidence" if options.criterion == "random" else options.criterion
    calib = ExitScores.from_outputs(calib_out, scored)
    test = ExitScores.from_outputs(test_out, scored)
    budgets = parse_budgets(options.budgets, calib)
    curves = solve_all(calib, budgets, options)
    tests = {n: evaluate_on(c, test, options.seed) for n, (c, _) in curves.items()}
    rows = table_rows(budgets, curves, tests)
    single = (calib.gflops, anytime_accuracy(calib.correct), anytime_accuracy(test.correct))
    split = {"calibration": {"split": calib_out.split}, "test": {"split": test_out.split}} if split is None else \
        {k: dict(v) for k, v in split.items()}
    split["calibration"]["num_samples"] = calib.num_samples
    split["test"]["num_samples"] = test.num_samples
    result = {
        "format": RESULTS_FORMAT, "version": 1, "model": calib_out.model, "criterion": options.criterion,
        "gflops": calib.gflops.tolist(), "num_exits": calib.num_exits, "num_classes": calib_out.num_classes,
        "accuracy_unit": "fraction", **split,
        "anytime_accuracy": {"calibration": single[1].tolist(), "test": single[2].tolist()},
        "budgets": [float(b) for b in budgets], "budgets_spec": options.budgets,
        "default_solver": default_solver_of(curves),
        "solvers": {n: {"curve": c.to_dict(), "seconds": t,
                        "test": {"accuracy": [e.accuracy for e in tests[n]],
                                 "expected_gflops": [e.expected_gflops for e in tests[n]],
                                 "exit_counts": [list(e.exit_counts) for e in tests[n]],
                                 "exit_fractions": [list(e.exit_fractions) for e in tests[n]]}}
                    for n, (c, t) in curves.items()},
        "table": rows,
    }
    if verbose:
        print(f"{calib_out.model or 'model'}: {calib.num_exits} exits, calibration {calib.num_samples} / test "
              f"{test.num_samples} samples, criterion {options.criterion}")
        for n, (c, t) in curves.items():
            print(f"  {n}: {c.num_points} points in {t:.2f} s")
        print(format_table(rows, list(curves), single))
    write_results(Path(out_dir), result, curves, tests, calib, test, calib_out.model or "thresholds", grids=grids,
                  baselines=baselines)
    if verbose:
        print(f"wrote {', '.join(THRESHOLD_FILES)} to {out_dir}")
    return result
