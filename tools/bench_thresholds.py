#!/usr/bin/env python
"""Benchmark of the threshold solvers on held-out data: does a solved curve generalise?

    python tools/bench_thresholds.py [RUN_DIR | OUTPUTS.npz ...] [--out DIR] [--force]
        [--solvers geometric,exact,genetic,margin,anchored] [--synthetic default|quick|none] [--seed 0]

For every source of per-exit outputs and every solver: solve on the source's calibration split, apply to
its test split, and compare the test curve with the geometric schedule's (solved on the same
calibration split) at matched realised cost (`common.thresholds.generalisation`): mean and worst gap
in accuracy points, the fraction of the geometric schedule's 59 points where the solver is at or above
it, and the cost at which each curve first reaches the last exit's test accuracy. Plus solve time.

Sources:
- a run folder (train.py / evaluate.py output): calib_outputs.npz -> test_outputs.npz, and, if the run
  kept them (`--train-outputs`), train_outputs.npz -> test_outputs.npz (thresholds solved on the
  training split, as the paper does);
- `calib_outputs.npz` / `train_outputs.npz` with a `test_outputs.npz` beside it: that pair; any other
  `.npz`: split in halves (seeded, stratified);
- synthetic outputs (`common.thresholds.synthetic`), "default": 360/359 (digits-sized), 1,000/2,000 (a
  small real set; also with the per-exit accuracies 80.6 / 81.7 / 84.6% of issue 19's real image set),
  6,000/50,000 with 1,000 classes (the reference code's threshold run: 6,000 calibration images,
  ImageNet's 50,000 validation images) and 50,000/50,000 (the solve-time target size), several seeds;
  "quick": one small source (tests); "none".

Targets (issue 19), per source: at or above the geometric schedule at >= 90% of its points, never more
than 0.3 points below it, and reaching the last exit's test accuracy at a cost no higher than the
geometric schedule does. The best solver meets them on the most sources (ties: the better worst gap,
then mean gap). Writes report.md and report.json into a new folder (default
outputs/bench_thresholds/<time>-report; a previous report is replaced only with --force, a run's folder
never: common/training/output_folder.py). Timings (wall and CPU seconds) are noisy on a busy machine;
they are measured, never asserted.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.atomic import atomic_write_text
from common.thresholds import (SOLVERS, ExitScores, anytime_accuracy, calibration_test_split, load_exit_outputs,
                               solve, synthetic_exit_outputs)
from common.thresholds.generalisation import compare_matched_cost, points_on
from common.thresholds.solvers import DEFAULT_SOLVER
from common.training.output_folder import TRAINING_MARKERS, claim_output

REFERENCE = "geometric"
DEFAULT_SOLVERS = "geometric,exact,genetic,margin,anchored"
MIN_AT_OR_ABOVE, MAX_BELOW = 0.90, 0.003  # targets: fraction of reference points, accuracy (0.3 points)
ISSUE_REAL_SET = (0.806, 0.817, 0.846)  # per-exit test top-1 of the 10-class real image set of issue 19
SYNTHETIC = {  # name -> list of (calibration, test, classes, seed, per-exit accuracy or None: the generator's)
    "quick": [(400, 400, 10, 0, None)],
    "default": [(360, 359, 10, s, None) for s in (0, 1, 2)] + [(1000, 2000, 10, s, None) for s in (0, 1, 2)]
               + [(1000, 2000, 10, s, ISSUE_REAL_SET) for s in (0, 1, 2)]
               + [(6000, 50000, 1000, s, None) for s in (0, 1)] + [(50000, 50000, 100, 0, None)],
    "none": [],
}
__all__ = ["main", "build_parser", "Source", "run_benchmark", "parse_solver_spec", "rank_solvers"]


class UsageError(ValueError):
    """Bad command-line input; reported as `error: ...` with exit status 2."""


@dataclass
class Source:
    name: str
    calib: ExitScores
    test: ExitScores
    note: str = ""


def parse_solver_spec(spec: str) -> tuple[str, str, dict]:
    """'anchored' or 'anchored:z=2:grid_size=256' -> (label, solver name, options)."""
    name, *opts = spec.split(":")
    if name not in SOLVERS:
        raise UsageError(f"--solvers: unknown solver {name!r}; choose from {','.join(SOLVERS)}")
    options = {}
    for opt in opts:
        key, sep, text = opt.partition("=")
        if not sep or not key:
            raise UsageError(f"--solvers: option {opt!r} of {spec!r} is not key=value")
        options[key] = _value(text)
    return spec, name, options


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def synthetic_sources(kind: str) -> list[Source]:
    out = []
    for n_cal, n_test, classes, seed, accuracy in SYNTHETIC[kind]:
        o = synthetic_exit_outputs(n_cal + n_test, num_exits=3, num_classes=classes, seed=seed,
                                   exit_accuracy=accuracy)
        ci, ti = calibration_test_split(o.num_samples, o.labels, n_cal / o.num_samples, seed)
        shape = "" if accuracy is None else " exits " + "/".join(f"{100 * a:.1f}" for a in accuracy)
        out.append(Source(f"synthetic {n_cal}/{n_test} c{classes}{shape} s{seed}",
                          ExitScores.from_outputs(o, "confidence", ci), ExitScores.from_outputs(o, "confidence", ti),
                          "common.thresholds.synthetic"))
    return out


def file_sources(path: str, seed: int) -> list[Source]:
    p = Path(path)
    if p.is_dir():
        test = p / "test_outputs.npz"
        pairs = [(p / f"{split}_outputs.npz", split) for split in ("calib", "train")]
        found = [(f, split) for f, split in pairs if f.is_file()]
        if not test.is_file() or not found:
            raise UsageError(f"{path}: a run folder needs test_outputs.npz and calib_outputs.npz (or train_outputs.npz)")
        test_scores = ExitScores.from_outputs(load_exit_outputs(test))
        return [Source(f"{p.name} ({split}-calibrated)", ExitScores.from_outputs(load_exit_outputs(f)), test_scores,
                       str(f)) for f, split in found]
    if not p.is_file():
        raise UsageError(f"{path}: no such run folder or .npz file")
    if p.name in ("calib_outputs.npz", "train_outputs.npz") and (p.parent / "test_outputs.npz").is_file():
        return [Source(f"{p.parent.name} ({p.name.split('_')[0]}-calibrated)",
                       ExitScores.from_outputs(load_exit_outputs(p)),
                       ExitScores.from_outputs(load_exit_outputs(p.parent / "test_outputs.npz")), str(p))]
    o = load_exit_outputs(p)
    ci, ti = calibration_test_split(o.num_samples, o.labels, 0.5, seed)
    return [Source(f"{p.stem} (halves, seed {seed})", ExitScores.from_outputs(o, "confidence", ci),
                   ExitScores.from_outputs(o, "confidence", ti), str(p))]


def evaluate_source(source: Source, specs, bar=None) -> dict:
    """Solve with every spec on the calibration split; compare on the test split with the reference."""
    cal, test = source.calib, source.test
    if (cal.num_exits, cal.gflops.tolist()) != (test.num_exits, test.gflops.tolist()):
        raise UsageError(f"{source.name}: calibration and test outputs are not from the same model")
    curves, seconds = {}, {}
    for label, name, options in specs:
        if bar is not None:
            bar.set_postfix_str(f"{source.name}: {label}")
        start, cpu = time.perf_counter(), time.process_time()
        curves[label] = solve(name, cal, None, **options)
        seconds[label] = (time.perf_counter() - start, time.process_time() - cpu)
        if bar is not None:
            bar.update(1)
    reference = points_on(curves[REFERENCE] if REFERENCE in curves else solve(REFERENCE, cal), test)
    solvers = {}
    for label, curve in curves.items():
        pts = points_on(curve, test)
        comp = compare_matched_cost(pts, reference, test)
        match_ok = comp.reference_match_gflops is None or (
            comp.match_gflops is not None and comp.match_gflops <= comp.reference_match_gflops * (1 + 1e-9))
        solvers[label] = {
            "solver": curve.solver, "seconds": seconds[label][0], "cpu_seconds": seconds[label][1],
            "num_budgets": curve.num_points, **comp.to_dict(),
            "targets": {"at_or_above": comp.fraction_at_or_above >= MIN_AT_OR_ABOVE,
                        "worst": comp.worst_gap >= -MAX_BELOW - 1e-12, "matching_cost": match_ok},
            "curve": {"budgets": curve.budgets.tolist(), "calibration_accuracy": curve.accuracy.tolist(),
                      "calibration_gflops": curve.expected_gflops.tolist(), "test_accuracy": pts.accuracy.tolist(),
                      "test_gflops": pts.gflops.tolist()}}
    return {"name": source.name, "note": source.note, "num_calibration": cal.num_samples,
            "num_test": test.num_samples, "num_exits": cal.num_exits, "gflops": cal.gflops.tolist(),
            "single_exit_test_accuracy": anytime_accuracy(test.correct).tolist(), "solvers": solvers}


def rank_solvers(results: list[dict]) -> list[dict]:
    """Per solver over all sources, best first: sources meeting every target, then worst gap, mean gap."""
    labels = list(results[0]["solvers"]) if results else []
    rows = []
    for label in labels:
        per = [r["solvers"][label] for r in results]
        rows.append({"solver": label, "sources": len(per),
                     "sources_meeting_targets": sum(all(s["targets"].values()) for s in per),
                     "mean_gap": float(np.mean([s["mean_gap"] for s in per])),
                     "worst_gap": float(min(s["worst_gap"] for s in per)),
                     "min_fraction_at_or_above": float(min(s["fraction_at_or_above"] for s in per)),
                     "matching_cost_ok": sum(s["targets"]["matching_cost"] for s in per),
                     "max_seconds": float(max(s["seconds"] for s in per)),
                     "max_cpu_seconds": float(max(s["cpu_seconds"] for s in per))})
    return sorted(rows, key=lambda r: (-r["sources_meeting_targets"], -r["worst_gap"], -r["mean_gap"]))


def peak_memory(source: Source, specs) -> list[dict]:
    """Peak traced MiB (tracemalloc, numpy included) of each solver on half and all of the calibration split:
    the inputs exist already and are not counted; linear growth shows as a ratio near 2."""
    half = source.calib.subset(np.arange(source.calib.num_samples // 2))
    rows = []
    for label, name, options in specs:
        peaks = []
        for scores in (half, source.calib):
            tracemalloc.start()
            solve(name, scores, None, **options)
            peaks.append(tracemalloc.get_traced_memory()[1] / 2 ** 20)
            tracemalloc.stop()
        rows.append({"solver": label, "num_samples": [half.num_samples, source.calib.num_samples], "peak_mib": peaks})
    return rows


def by_group(results: list[dict]) -> list[dict]:
    """Sources that differ only in their seed (" s<seed>" at the end of the name), each number the worst over
    the seeds: lowest mean gap, lowest worst gap, lowest share at or above, any missed target."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(re.sub(r" s\d+$", "", r["name"]), []).append(r)
    rows = []
    for name, members in groups.items():
        cells = {}
        for label in members[0]["solvers"]:
            per = [m["solvers"][label] for m in members]
            cells[label] = {"mean_gap": min(s["mean_gap"] for s in per), "worst_gap": min(s["worst_gap"] for s in per),
                            "fraction_at_or_above": min(s["fraction_at_or_above"] for s in per),
                            "all_targets": all(all(s["targets"].values()) for s in per)}
        rows.append({"group": name, "sources": len(members), "solvers": cells})
    return rows


def run_benchmark(sources: list[Source], specs, progress: bool = True) -> dict:
    bar = tqdm(total=len(sources) * len(specs), desc="solving", unit="solve", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        results = [evaluate_source(s, specs, bar) for s in sources]
    finally:
        bar.close()
    ranking = rank_solvers(results)
    return {"format": "dvt-threshold-bench", "version": 1, "reference": REFERENCE, "default_solver": DEFAULT_SOLVER,
            "targets": {"min_fraction_at_or_above": MIN_AT_OR_ABOVE, "max_points_below": 100 * MAX_BELOW,
                        "matching_cost": "no higher than the reference's"},
            "sources": results, "groups": by_group(results), "ranking": ranking,
            "best": next((r["solver"] for r in ranking if r["solver"] != REFERENCE), None)}


def _pt(x) -> str:
    return f"{100 * x:+.2f}"


def _gf(x) -> str:
    return "never" if x is None else f"{x:.4g}"


def render_markdown(report: dict) -> str:
    lines = ["# Threshold solvers on held-out data", "",
             f"Command: `{report['command']}`  ", f"Written: {report['written']}  ",
             f"Reference: the `{report['reference']}` schedule solved on the same calibration split. Gaps are test "
             "accuracy points (solver minus reference) at the reference's realised test costs; a solver's test curve "
             "is interpolated linearly along its realised test GFLOPs, starting from exit 1 alone and flat after its "
             "costliest point. Matching cost: first test GFLOPs at which a curve reaches the last exit's test "
             "accuracy.", "",
             f"Targets per source: at or above the reference at >= {100 * MIN_AT_OR_ABOVE:.0f}% of its points, never "
             f"more than {100 * MAX_BELOW:.1f} points below, matching cost no higher than the reference's.", "",
             "## All sources", "",
             "| solver | sources meeting all targets | mean gap (pt) | worst gap (pt) | min at-or-above | "
             "matching cost <= reference | slowest solve, wall / CPU (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["ranking"]:
        lines.append(f"| `{r['solver']}` | {r['sources_meeting_targets']}/{r['sources']} | {_pt(r['mean_gap'])} | "
                     f"{_pt(r['worst_gap'])} | {100 * r['min_fraction_at_or_above']:.1f}% | "
                     f"{r['matching_cost_ok']}/{r['sources']} | {r['max_seconds']:.2f} / {r['max_cpu_seconds']:.2f} |")
    lines += ["", f"Best by this measure: `{report['best']}`; the project's default solver: "
              f"`{report['default_solver']}`.", ""]
    labels = list(report["sources"][0]["solvers"]) if report["sources"] else []
    lines += ["## By source (worst over seeds of each number: mean gap / worst gap, points / share at or above; "
              "* = a target missed)", "", "| source | " + " | ".join(f"`{n}`" for n in labels) + " |",
              "|---|" + "---|" * len(labels)]
    for g in report["groups"]:
        cells = [f"{_pt(c['mean_gap'])} / {_pt(c['worst_gap'])} / {100 * c['fraction_at_or_above']:.0f}%"
                 + ("" if c["all_targets"] else " *") for c in (g["solvers"][n] for n in labels)]
        lines.append(f"| {g['group']} ({g['sources']}) | " + " | ".join(cells) + " |")
    lines.append("")
    if "memory" in report:
        lines += [f"Peak traced memory on {report['memory']['source']} (MiB, half / all of its calibration split):",
                  ""] + [f"- `{r['solver']}`: {r['peak_mib'][0]:.1f} / {r['peak_mib'][1]:.1f}"
                         for r in report["memory"]["solvers"]] + [""]
    for src in report["sources"]:
        single = " / ".join(f"{100 * a:.2f}" for a in src["single_exit_test_accuracy"])
        lines += [f"## {src['name']}", "",
                  f"{src['num_calibration']} calibration / {src['num_test']} test samples, {src['num_exits']} exits "
                  f"at {' / '.join(f'{g:.4g}' for g in src['gflops'])} GFLOPs; single-exit test top-1 {single} %; "
                  f"from {src['note']}.", "",
                  "| solver | mean gap (pt) | worst gap (pt) | at or above | matches last exit at (GFLOPs) | "
                  "reference matches at | solve, wall / CPU (s) | targets met |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for label, s in src["solvers"].items():
            met = ", ".join(k for k, v in s["targets"].items() if v) or "none"
            missed = [k for k, v in s["targets"].items() if not v]
            lines.append(f"| `{label}` | {_pt(s['mean_gap'])} | {_pt(s['worst_gap'])} | "
                         f"{100 * s['fraction_at_or_above']:.1f}% | {_gf(s['match_gflops'])} | "
                         f"{_gf(s['reference_match_gflops'])} | {s['seconds']:.2f} / {s['cpu_seconds']:.2f} | "
                         f"{'all' if not missed else met + ' (missed: ' + ', '.join(missed) + ')'} |")
        lines.append("")
    return "\n".join(lines)


REPORT_FILES = ["report.json", "report.md"]


def claim_report_folder(out, force: bool):
    """The output-folder policy of every command (common/training/output_folder.py): a new folder
    outputs/bench_thresholds/<time>-report by default; an existing report is replaced only with --force; a
    run's folder never."""
    return claim_output(out, kind="bench_thresholds", name="report", files=REPORT_FILES,
                        command="tools/bench_thresholds.py", flag="--out", force=force,
                        protected=TRAINING_MARKERS + ("summary.json", "thresholds.json"))


def write_report(out: Path, report: dict) -> None:
    """report.json, then report.md (each written atomically) into the claimed folder `out`."""
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("sources", nargs="*", help="run folders or per-exit outputs .npz files")
    p.add_argument("--out", default=None, help="report folder (default: a new outputs/bench_thresholds/<time>-report)")
    p.add_argument("--force", action="store_true", help="replace the report.json / report.md of a previous run in --out")
    p.add_argument("--solvers", default=DEFAULT_SOLVERS,
                   help=f"comma-separated solvers, each optionally with options, e.g. anchored:z=2 (default "
                        f"{DEFAULT_SOLVERS}); {REFERENCE} is always run as the reference")
    p.add_argument("--synthetic", choices=sorted(SYNTHETIC), default="default", help="synthetic sources to add")
    p.add_argument("--seed", type=int, default=0, help="seed of the halves split of single .npz files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--memory", action="store_true",
                   help="also trace each solver's peak memory on the largest source (half and all of it)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        specs = [parse_solver_spec(s.strip()) for s in args.solvers.split(",") if s.strip()]
        labels = [label for label, _, _ in specs]
        if len(set(labels)) != len(labels) or not specs:
            raise UsageError(f"--solvers: empty or repeated entries in {args.solvers!r}")
        if REFERENCE not in labels:
            specs.insert(0, (REFERENCE, REFERENCE, {}))
        sources = [s for path in args.sources for s in file_sources(path, args.seed)]
        sources += synthetic_sources(args.synthetic)
        if not sources:
            raise UsageError("no sources: give run folders / .npz files or --synthetic quick|default")
        with claim_report_folder(args.out, args.force) as out:
            report = run_benchmark(sources, specs, progress=not args.no_progress)
            if args.memory:
                largest = max(sources, key=lambda s: s.calib.num_samples)
                report["memory"] = {"source": largest.name, "solvers": peak_memory(largest, specs)}
            report["command"] = " ".join(["python tools/bench_thresholds.py",
                                          *(argv if argv is not None else sys.argv[1:])])
            report["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            write_report(out, report)
    except (UsageError, ValueError, FileNotFoundError) as e:  # RunFolderError, ExitOutputsError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_markdown(report))
    print(f"\nwrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
