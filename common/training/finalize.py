"""The end of every training or evaluation run, in both frameworks: per-exit outputs -> files in --output.

    summary = finalize_run(out_dir, cfg, calib=(logits, labels), test=(logits, labels), framework="torch",
                           mode="train", dataset={...}, weights={...}, solvers="anchored,exact,genetic,geometric")

writes `calib_outputs.npz` / `test_outputs.npz` (layout: common/thresholds/outputs.py), solves thresholds
on the calibration split (or, given `train=` outputs, on the training split, as the paper does; then also
`train_outputs.npz`) and reports them on the test split (`common.thresholds.pipeline`: thresholds.json
with its default solver, and the plots; skipped for single-exit models), then `summary.json`
(`common.training.summary`). Logits are (K, N, C) arrays, labels (N,), in the order of the split.

Pictures: with `test_images` (a `common.training.gallery.SplitImages` of the test split, in the order of
its logits) a cascade also gets `easy_hard_examples.png`, the paper's Fig. 9; `baselines` (finished runs of
single-exit backbones on the same data, `load_baselines`) become labelled points of accuracy_vs_gflops.png.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from common.config import DVTConfig
from common.flops import cumulative_gflops
from common.thresholds import ExitOutputs
from common.thresholds.outputs import write_exit_outputs
from common.thresholds.pipeline import DEFAULT_SOLVERS_TEXT, ThresholdOptions, parse_solvers, run_thresholds

from .gallery import EASY_HARD_FILE, SplitImages, write_easy_hard
from .run_files import run_files
from .summary import build_summary, load_summary, write_summary


def finalize_run(out_dir, cfg: DVTConfig, *, calib: tuple, test: tuple, framework: str, mode: str, dataset: dict,
                 weights: dict, solvers: str = DEFAULT_SOLVERS_TEXT, seed: int = 0,
                 train_seconds: float | None = None, files: dict | None = None, verbose: bool = True,
                 train: tuple | None = None, test_images: SplitImages | None = None,
                 baselines: dict | None = None) -> dict:
    """Write outputs, thresholds, plots and summary.json into `out_dir`; return the summary dict.

    `files` overrides entries of the summary's file list (e.g. files the run did not write set to None).
    `train`: (logits, labels) of the training split without augmentation; thresholds are then solved on it.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = run_files(framework)
    gflops = cumulative_gflops(cfg)
    calib_out = ExitOutputs(calib[0], calib[1], gflops, cfg.name, "calib")
    test_out = ExitOutputs(test[0], test[1], gflops, cfg.name, "test")
    write_exit_outputs(out / names["calib_outputs"], calib_out)
    write_exit_outputs(out / names["test_outputs"], test_out)
    solve_on, solve_split = calib_out, "calib"
    if train is not None:
        names["train_outputs"] = "train_outputs.npz"
        solve_on, solve_split = ExitOutputs(train[0], train[1], gflops, cfg.name, "train"), "train"
        write_exit_outputs(out / names["train_outputs"], solve_on)
    result = None
    if cfg.num_exits >= 2:
        split = {"calibration": {"file": names[f"{solve_split}_outputs"], "split": solve_split},
                 "test": {"file": names["test_outputs"], "split": "test"}}
        result = run_thresholds(solve_on, test_out, out, ThresholdOptions(solvers=parse_solvers(solvers), seed=seed),
                                split=split, verbose=False, grids=cfg.grids, baselines=baselines)
        result["solved_on"] = solve_split
        if test_images is not None:
            write_easy_hard(out / EASY_HARD_FILE, test[0], test[1], test_images,
                            title=f"{cfg.name}: easy and hard test images (paper Fig. 9)")
            names["plots"] = list(names["plots"]) + [EASY_HARD_FILE]
    else:
        names["thresholds"], names["plots"] = None, []
    names.update(files or {})
    summary = build_summary(framework=framework, mode=mode, cfg=cfg, dataset=dataset, weights=weights,
                            calib=calib_out, test=test_out, threshold_result=result, files=names,
                            timing={"train_seconds": train_seconds, "finalize_seconds": time.perf_counter() - start})
    write_summary(out / names["summary"], summary)
    if verbose:
        print(format_summary(summary))
    return summary


def load_baselines(run_dirs, dataset: dict) -> dict:
    """name -> (GFLOPs, test top-1) of finished runs (their summary.json; the last exit of each), for the plots.

    A run on other data (another dataset name or test-split size) cannot be compared: it is left out with a
    message (the flags were checked before training; a finished run is never lost over a picture)."""
    out = {}
    for run in run_dirs or ():
        s = load_summary(Path(run) / "summary.json")
        theirs = (s["dataset"].get("name"), s["dataset"].get("sizes", {}).get("test"))
        ours = (dataset.get("name"), dataset.get("sizes", {}).get("test"))
        if theirs != ours:
            print(f"warning: --baseline {run} left out of the plot: it was evaluated on {theirs[0]} with {theirs[1]} "
                  f"test images, this run on {ours[0]} with {ours[1]}")
            continue
        out[s["model"]] = (float(s["gflops"][-1]), float(s["top1"]["test"][-1]))
    return out


def run_pictures(splits, args) -> dict:
    """finalize_run's picture arguments for a trainer or evaluator: its test images and its --baseline runs."""
    from .splits import dataset_info
    return {"test_images": SplitImages(splits.test, splits.class_names),
            "baselines": load_baselines(getattr(args, "baseline", None) or (), dataset_info(args.dataset, splits))}


def checkpoint_extras(out_dir, summary: dict) -> dict:
    """What the final checkpoint carries beside the weights: the solved threshold curves
    (`ThresholdCurve.to_dict` per solver, from thresholds.json; {} for single-exit models), which of them
    is the default (`ThresholdCurve.load(extras)` picks it), and the per-exit top-1 and cumulative GFLOPs."""
    curves = {}
    if summary["files"].get("thresholds"):
        with open(Path(out_dir) / summary["files"]["thresholds"], encoding="utf-8") as fh:
            results = json.load(fh)
        curves = {n: s["curve"] for n, s in results["solvers"].items()}
        return {"thresholds": curves, "default_solver": results.get("default_solver"), "top1": summary["top1"],
                "gflops": summary["gflops"]}
    return {"thresholds": curves, "default_solver": None, "top1": summary["top1"], "gflops": summary["gflops"]}


def format_summary(summary: dict) -> str:
    """A few lines for the console: per-exit top-1 and GFLOPs, and the best budget points."""
    lines = [f"{summary['model']}: per-exit top-1 % (calib / test) at cumulative GFLOPs"]
    for k, (g, a, b) in enumerate(zip(summary["gflops"], summary["top1"]["calib"], summary["top1"]["test"])):
        lines.append(f"  exit {k + 1} (grid {summary['grids'][k]}): {100 * a:6.2f} / {100 * b:6.2f}  at {g:.6g} GFLOPs")
    for name, h in summary["highlights"].items():
        match = h["matches_last_exit_gflops"]
        text = (f"matches the last exit at {match:.6g} GFLOPs ({100 * h['gflops_saving']:.0f}% fewer)"
                if match is not None else "never matches the last exit")
        lines.append(f"  {name}: best test top-1 {100 * h['best_accuracy']:.2f}% at {h['best_accuracy_gflops']:.6g} "
                     f"GFLOPs; {text}")
    return "\n".join(lines)
