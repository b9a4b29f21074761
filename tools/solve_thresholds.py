#!/usr/bin/env python
"""Choose early-exit thresholds from stored per-exit outputs and report budgeted accuracy.

    python tools/solve_thresholds.py OUTPUTS.npz [--out DIR] [--force]
        [--test TEST.npz | --calib-fraction 0.5] [--seed 0]
        [--solvers anchored,exact,genetic,geometric] [--criterion confidence|entropy|random]
        [--budgets geometric | grid:N | 1.0,1.5,2.0]

OUTPUTS.npz holds per-exit logits, labels and cumulative GFLOPs (layout: common/thresholds/outputs.py,
written by both frameworks' evaluation scripts). Thresholds are solved on a calibration split and
reported on a test split: with --test, OUTPUTS.npz is all calibration and TEST.npz is the test split;
otherwise OUTPUTS.npz is split by a seeded, stratified split (--calib-fraction, --seed).

Solvers (common/thresholds): "anchored" (default; the reference's geometric schedule, left only where the
calibration split shows a significant gain; it generalises best, tools/bench_thresholds.py), "exact"
(the most accurate thresholds on calibration), "genetic" (the paper's GA), "geometric" (the reference's
schedule), "margin" (a spending tie-break of the grid optimum, for comparison). thresholds.json names the
curve users get as "default_solver": anchored if solved, else the first listed.

Budgets (average GFLOPs per image) for all but the geometric schedule: "geometric" (default) = the costs
the reference's geometric schedule reaches on calibration, so the curves line up (anchored adds the last
exit's cost); "grid:N" = N evenly spaced budgets from the cost of exit 1 to the cost of the last exit; or
a comma-separated list. The geometric schedule always gives its own 59 points. In the printed table every
solver contributes the point it applies at the row's budget (`ThresholdCurve.index_for_budget`).

Writes into DIR (default: a new outputs/thresholds/<date>-<time>-<OUTPUTS name>; all files or none): thresholds.json (curves with thresholds per budget, calibration and
test accuracy, GFLOPs, exit fractions), accuracy_vs_gflops.png (test split; calibration in
accuracy_vs_gflops_calibration.png) with the single-exit points, and exit_counts.png (samples leaving
at each exit per budget on the test split, paper Fig. 10). "random" solves thresholds on confidence and
evaluates random exit with the same exit proportions (paper Table 9). DIR must not be a training run's or an
evaluation's folder (their summary.json describes the thresholds there); a previous solve's files in DIR are
replaced only with --force.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from common.thresholds import CRITERIA, SOLVERS, ExitOutputs, calibration_test_split, load_exit_outputs
from common.thresholds.pipeline import (DEFAULT_SOLVERS_TEXT, RESULTS_FORMAT, THRESHOLD_FILES, ThresholdOptions,
                                        parse_outer, parse_solvers, run_thresholds)
from common.training.output_folder import claim_thresholds_output

FILES = THRESHOLD_FILES
__all__ = ["FILES", "RESULTS_FORMAT", "build_parser", "main", "run"]


class UsageError(ValueError):
    """Bad command-line input; reported as `error: ...` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("outputs", help="per-exit outputs .npz (calibration, or to be split)")
    p.add_argument("--out", default=None,
                   help="output directory (default: a new outputs/thresholds/<date>-<time>-<name>); never a run's folder")
    p.add_argument("--force", action="store_true", help="replace the files of a previous solve in --out")
    p.add_argument("--test", help="separate test-split .npz; then all of OUTPUTS is calibration")
    p.add_argument("--calib-fraction", type=float, default=None,
                   help="share of OUTPUTS used for calibration when --test is not given (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the GA and random exit (default 0)")
    p.add_argument("--solvers", default=DEFAULT_SOLVERS_TEXT,
                   help=f"comma-separated subset of {','.join(SOLVERS)} (default: {DEFAULT_SOLVERS_TEXT})")
    p.add_argument("--criterion", default="confidence", choices=CRITERIA)
    p.add_argument("--budgets", default="geometric",
                   help="'geometric' (default), 'grid:N', or comma-separated GFLOPs")
    p.add_argument("--ga-population", type=int, default=None, help="GA population (default 64)")
    p.add_argument("--ga-generations", type=int, default=None, help="GA generations (default 150)")
    p.add_argument("--exact-outer-candidates", default="256",
                   help="exact solver, 4+ exits only: candidate thresholds per outer exit, or 'all' for a fully "
                        "exact (slow) search (default 256; the accuracy bound is reported)")
    return p


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


def run(args, out=None) -> dict:
    options = ThresholdOptions(solvers=parse_solvers(args.solvers), criterion=args.criterion, budgets=args.budgets,
                               seed=args.seed, ga_population=args.ga_population, ga_generations=args.ga_generations,
                               exact_outer_candidates=parse_outer(args.exact_outer_candidates))
    calib_out, test_out, split = load_splits(args)
    return run_thresholds(calib_out, test_out, args.out if out is None else out, options, split=split)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with claim_thresholds_output(args) as out:
            run(args, out)
    except (ValueError, FileNotFoundError) as e:  # ExitOutputsError, UsageError, ThresholdOptionError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
