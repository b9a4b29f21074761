#!/usr/bin/env python
"""Choose early-exit thresholds from stored per-exit outputs and report budgeted accuracy.

    python tools/solve_thresholds.py OUTPUTS.npz --out DIR
        [--test TEST.npz | --calib-fraction 0.5] [--seed 0]
        [--solvers geometric,genetic,exact] [--criterion confidence|entropy|random]
        [--budgets geometric | grid:N | 1.0,1.5,2.0]

OUTPUTS.npz holds per-exit logits, labels and cumulative GFLOPs (layout: common/thresholds/outputs.py,
written by both frameworks' evaluation scripts). Thresholds are solved on a calibration split and
reported on a test split: with --test, OUTPUTS.npz is all calibration and TEST.npz is the test split;
otherwise OUTPUTS.npz is split by a seeded, stratified split (--calib-fraction, --seed).

Budgets (average GFLOPs per image) for the genetic and exact solvers: "geometric" (default) = the costs
the reference's geometric schedule reaches on calibration, so the three curves line up; "grid:N" = N
evenly spaced budgets from the cost of exit 1 to the cost of the last exit; or a comma-separated list.
The geometric schedule always gives its own 59 points. In the printed table every solver contributes
its most accurate calibration point whose calibration cost fits the row's budget.

Writes into DIR (all files or none): thresholds.json (curves with thresholds per budget, calibration and
test accuracy, GFLOPs, exit fractions), accuracy_vs_gflops.png (test split; calibration in
accuracy_vs_gflops_calibration.png) with the single-exit points, and exit_counts.png (samples leaving
at each exit per budget on the test split, paper Fig. 10). "random" solves thresholds on confidence and
evaluates random exit with the same exit proportions (paper Table 9).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from common.thresholds import (CRITERIA, SOLVERS, ExitOutputs, ExitScores, ThresholdCurve,
                               anytime_accuracy, budget_grid, calibration_test_split, default_budgets,
                               evaluate_random_exit, evaluate_thresholds, load_exit_outputs, random_exit_curve,
                               solve, validate_budgets)
from common.atomic import atomic_write_text

RESULTS_FORMAT = "dvt-threshold-results"
FILES = ("thresholds.json", "accuracy_vs_gflops.png", "accuracy_vs_gflops_calibration.png", "exit_counts.png")


class UsageError(ValueError):
    """Bad command-line input; reported as `error: ...` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outputs", help="per-exit outputs .npz (calibration, or to be split)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--test", help="separate test-split .npz; then all of OUTPUTS is calibration")
    p.add_argument("--calib-fraction", type=float, default=None,
                   help="share of OUTPUTS used for calibration when --test is not given (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the GA and random exit (default 0)")
    p.add_argument("--solvers", default="geometric,genetic,exact",
                   help=f"comma-separated subset of {','.join(SOLVERS)} (default: all)")
    p.add_argument("--criterion", default="confidence", choices=CRITERIA)
    p.add_argument("--budgets", default="geometric",
                   help="'geometric' (default), 'grid:N', or comma-separated GFLOPs")
    p.add_argument("--ga-population", type=int, default=None, help="GA population (default 64)")
    p.add_argument("--ga-generations", type=int, default=None, help="GA generations (default 150)")
    p.add_argument("--exact-outer-candidates", default="256",
                   help="exact solver, 4+ exits only: candidate thresholds per outer exit, or 'all' for a fully "
                        "exact (slow) search (default 256; the accuracy bound is reported)")
    return p


def parse_solvers(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SOLVERS]
    if not names or unknown:
        raise UsageError(f"--solvers: unknown or empty {unknown or text!r}; choose from {','.join(SOLVERS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--solvers lists a solver twice: {text!r}")
    return names


def parse_budgets(text: str, calib: ExitScores) -> np.ndarray:
    text = text.strip()
    if text == "geometric":
        return default_budgets(calib)
    if text.startswith("grid:"):
        try:
            num = int(text[5:])
        except ValueError:
            raise UsageError(f"--budgets grid:N needs an integer N, got {text!r}") from None
        if num < 1:
            raise UsageError(f"--budgets grid:N needs N >= 1, got {num}")
        return validate_budgets(budget_grid(calib.gflops, num), calib.gflops)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--budgets: expected 'geometric', 'grid:N' or comma-separated numbers, got {text!r}") \
            from None
    try:
        return validate_budgets(values, calib.gflops)
    except ValueError as e:
        raise UsageError(f"--budgets: {e}") from None


def parse_outer(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise UsageError(f"--exact-outer-candidates must be an integer >= 2 or 'all', got {text!r}")
    return value


def load_splits(args) -> tuple[ExitOutputs, ExitOutputs, dict]:
    outputs = load_exit_outputs(args.outputs)
    if outputs.num_exits < 2:
        raise UsageError(f"{args.outputs}: thresholds need at least 2 exits, the file has {outputs.num_exits}")
    if args.test:
        if args.calib_fraction is not None:
            raise UsageError("--calib-fraction splits OUTPUTS; it cannot be combined with --test")
        test = load_exit_outputs(args.test)
        if (test.num_exits, test.num_classes) != (outputs.num_exits, outputs.num_classes):
            raise UsageError(f"{args.test} has {test.num_exits} exits x {test.num_classes} classes, "
                             f"{args.outputs} has {outputs.num_exits} x {outputs.num_classes}")
        if not np.allclose(test.gflops, outputs.gflops, rtol=1e-9, atol=0):
            raise UsageError(f"GFLOPs differ between {args.outputs} {outputs.gflops.tolist()} and "
                             f"{args.test} {test.gflops.tolist()}: not the same model")
        split = {"calibration": {"file": str(args.outputs), "split": outputs.split},
                 "test": {"file": str(args.test), "split": test.split}}
        return outputs, test, split
    fraction = 0.5 if args.calib_fraction is None else args.calib_fraction
    if outputs.num_samples < 2:
        raise UsageError(f"{args.outputs} holds {outputs.num_samples} sample(s); cannot split it")
    calib_idx, test_idx = calibration_test_split(outputs.num_samples, outputs.labels, fraction, args.seed)
    split = {"calibration": {"file": str(args.outputs), "split": outputs.split, "calib_fraction": fraction,
                             "seed": args.seed, "stratified": True},
             "test": {"file": str(args.outputs), "split": outputs.split, "complement_of": "calibration"}}
    return outputs.subset(calib_idx, "calibration"), outputs.subset(test_idx, "test"), split


def solve_all(names, calib: ExitScores, budgets, args) -> dict[str, tuple[ThresholdCurve, float]]:
    curves = {}
    for name in names:
        options = {}
        if name == "genetic":
            options["seed"] = args.seed
            if args.ga_population is not None:
                options["population"] = args.ga_population
            if args.ga_generations is not None:
                options["generations"] = args.ga_generations
        if name == "exact":
            options["max_outer_candidates"] = parse_outer(args.exact_outer_candidates)
        start = time.perf_counter()
        curve = solve(name, calib, None if name == "geometric" else budgets, **options)
        if args.criterion == "random":
            curve = random_exit_curve(curve, calib, args.seed)
        curves[name] = (curve, time.perf_counter() - start)
    return curves


def evaluate_on(curve: ThresholdCurve, scores: ExitScores, seed: int):
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


def write_results(out: Path, result: dict, curves, tests, calib_scores, test_scores, title: str) -> None:
    """Render everything into a staging directory, then move it into place (no partial output)."""
    from common.thresholds.plots import plot_accuracy_vs_gflops, plot_exit_counts

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: parent directory {parent} does not exist")
    staging = parent / f".{out.name}.staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        atomic_write_text(staging / "thresholds.json", json.dumps(result, indent=1, allow_nan=False) + "\n")
        gf = calib_scores.gflops
        plot_accuracy_vs_gflops(staging / "accuracy_vs_gflops.png",
                                {n: ([e.expected_gflops for e in tests[n]], [e.accuracy for e in tests[n]])
                                 for n in curves},
                                (gf, anytime_accuracy(test_scores.correct)), f"{title} — test split")
        plot_accuracy_vs_gflops(staging / "accuracy_vs_gflops_calibration.png",
                                {n: (c.expected_gflops, c.accuracy) for n, (c, _) in curves.items()},
                                (gf, anytime_accuracy(calib_scores.correct)), f"{title} — calibration split")
        plot_exit_counts(staging / "exit_counts.png",
                         {n: (c.budgets, np.array([e.exit_counts for e in tests[n]])) for n, (c, _) in curves.items()},
                         f"{title} — samples leaving at each exit per budget (test split)")
        if not out.exists():
            staging.rename(out)
            return
        for name in FILES:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(args) -> dict:
    names = parse_solvers(args.solvers)
    calib_out, test_out, split = load_splits(args)
    scored = "confidence" if args.criterion == "random" else args.criterion
    calib = ExitScores.from_outputs(calib_out, scored)
    test = ExitScores.from_outputs(test_out, scored)
    budgets = parse_budgets(args.budgets, calib)
    curves = solve_all(names, calib, budgets, args)
    tests = {n: evaluate_on(c, test, args.seed) for n, (c, _) in curves.items()}
    rows = table_rows(budgets, curves, tests)
    single = (calib.gflops, anytime_accuracy(calib.correct), anytime_accuracy(test.correct))
    split["calibration"]["num_samples"] = calib.num_samples
    split["test"]["num_samples"] = test.num_samples
    result = {
        "format": RESULTS_FORMAT, "version": 1, "model": calib_out.model, "criterion": args.criterion,
        "gflops": calib.gflops.tolist(), "num_exits": calib.num_exits, "num_classes": calib_out.num_classes,
        "accuracy_unit": "fraction", **split,
        "anytime_accuracy": {"calibration": single[1].tolist(), "test": single[2].tolist()},
        "budgets": [float(b) for b in budgets], "budgets_spec": args.budgets,
        "solvers": {n: {"curve": c.to_dict(), "seconds": t,
                        "test": {"accuracy": [e.accuracy for e in tests[n]],
                                 "expected_gflops": [e.expected_gflops for e in tests[n]],
                                 "exit_counts": [list(e.exit_counts) for e in tests[n]],
                                 "exit_fractions": [list(e.exit_fractions) for e in tests[n]]}}
                    for n, (c, t) in curves.items()},
        "table": rows,
    }
    print(f"{calib_out.model or 'model'}: {calib.num_exits} exits, calibration {calib.num_samples} / test "
          f"{test.num_samples} samples, criterion {args.criterion}")
    for n, (c, t) in curves.items():
        print(f"  {n}: {c.num_points} points in {t:.2f} s")
    print(format_table(rows, list(curves), single))
    write_results(Path(args.out), result, curves, tests, calib, test, calib_out.model or "thresholds")
    print(f"wrote {', '.join(FILES)} to {args.out}")
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:  # ExitOutputsError and UsageError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
