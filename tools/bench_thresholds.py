#!/usr/bin/env python
"""Benchmark of the threshold solvers on synthetic, realistic per-exit outputs (issue 6 targets).

    python tools/bench_thresholds.py [--calib 50000] [--test 50000] [--exits 3] [--classes 100] [--seed 0]

Prints (1) the time each solver needs for all budgets (geometric: its 59 points; genetic and exact: the
59 budgets the geometric schedule reaches), targets: exact < 5 s, GA < 30 s for 50,000 x 3; (2) peak
traced memory (tracemalloc, numpy allocations included) of each solver at half and full calibration size,
to show it grows linearly; (3) per budget, calibration and test-split accuracy of the three solvers,
and whether the exact solver is at least as accurate as the others on calibration everywhere.
Performance is measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np

from common.thresholds import (ExitScores, anytime_accuracy, calibration_test_split, evaluate_thresholds, solve,
                               synthetic_exit_outputs)

SOLVER_ORDER = ("geometric", "genetic", "exact")


def make_splits(n_calib: int, n_test: int, exits: int, classes: int, seed: int):
    outputs = synthetic_exit_outputs(n_calib + n_test, num_exits=exits, num_classes=classes, seed=seed)
    calib_idx, test_idx = calibration_test_split(outputs.num_samples, outputs.labels,
                                                 n_calib / outputs.num_samples, seed)
    return (ExitScores.from_outputs(outputs, "confidence", calib_idx),
            ExitScores.from_outputs(outputs, "confidence", test_idx))


def run_solvers(calib: ExitScores, seed: int):
    curves, seconds = {}, {}
    for name in SOLVER_ORDER:
        start = time.perf_counter()
        if name == "geometric":
            curves[name] = solve(name, calib)
        else:
            options = {"seed": seed} if name == "genetic" else {}
            curves[name] = solve(name, calib, curves["geometric"].budgets, **options)
        seconds[name] = time.perf_counter() - start
    return curves, seconds


def peak_memory(calib: ExitScores, budgets, name: str, seed: int) -> float:
    """Peak traced MiB while solving (the inputs already exist and are not counted)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    if name == "geometric":
        solve(name, calib)
    else:
        solve(name, calib, budgets, **({"seed": seed} if name == "genetic" else {}))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2 ** 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--calib", type=int, default=50_000, help="calibration samples (default 50000)")
    p.add_argument("--test", type=int, default=50_000, help="test samples (default 50000)")
    p.add_argument("--exits", type=int, default=3)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t = time.perf_counter()
    calib, test = make_splits(args.calib, args.test, args.exits, args.classes, args.seed)
    print(f"synthetic outputs: {args.exits} exits, {args.classes} classes, calibration {calib.num_samples}, "
          f"test {test.num_samples} ({time.perf_counter() - t:.1f} s to generate); GFLOPs {calib.gflops.tolist()}")
    print("anytime accuracy (calibration): " + ", ".join(f"{100 * a:.2f}%" for a in anytime_accuracy(calib.correct)))

    curves, seconds = run_solvers(calib, args.seed)
    budgets = curves["geometric"].budgets
    print(f"\n== time for all budgets ({len(budgets)}), calibration N = {calib.num_samples} ==")
    for name in SOLVER_ORDER:
        target = {"exact": " (target < 5 s)", "genetic": " (target < 30 s)"}.get(name, "")
        print(f"  {name:9s} {seconds[name]:7.2f} s{target}")

    print("\n== peak traced memory (MiB) ==")
    half = calib.subset(np.arange(calib.num_samples // 2))
    print(f"  {'solver':9s} {'N=' + str(half.num_samples):>10s} {'N=' + str(calib.num_samples):>10s}  ratio")
    for name in SOLVER_ORDER:
        b_half = solve("geometric", half).budgets
        m_half = peak_memory(half, b_half, name, args.seed)
        m_full = peak_memory(calib, budgets, name, args.seed)
        print(f"  {name:9s} {m_half:10.1f} {m_full:10.1f}  {m_full / max(m_half, 1e-9):5.2f}")

    print("\n== accuracy (%) per budget: calibration / test ==")
    tests = {n: [evaluate_thresholds(test, th) for th in c.thresholds] for n, c in curves.items()}
    print(f"{'budget':>8} | " + " | ".join(f"{n:^23s}" for n in SOLVER_ORDER) + " | exact - best other (test)")
    ok = True
    for j, b in enumerate(budgets):
        cells, cal, tst = [], {}, {}
        for name in SOLVER_ORDER:
            i = curves[name].index_for_budget(b)
            cal[name], tst[name] = curves[name].accuracy[i], tests[name][i].accuracy
            cells.append(f"{100 * cal[name]:6.2f} / {100 * tst[name]:6.2f} @{tests[name][i].expected_gflops:5.3f}")
        ok &= all(cal["exact"] >= cal[n] for n in SOLVER_ORDER)
        diff = 100 * (tst["exact"] - max(tst["geometric"], tst["genetic"]))
        print(f"{b:8.4f} | " + " | ".join(cells) + f" | {diff:+.2f}")
    mean = {n: 100 * np.mean([tests[n][curves[n].index_for_budget(b)].accuracy for b in budgets]) for n in SOLVER_ORDER}
    print("mean test accuracy over budgets: " + ", ".join(f"{n} {mean[n]:.3f}%" for n in SOLVER_ORDER))
    print(f"exact >= geometric and genetic on calibration at every budget: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
