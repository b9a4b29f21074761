"""`summary.json`: the one file that describes a finished training or evaluation run, in both frameworks.

`torch_impl/train.py`, `torch_impl/evaluate.py` and their MindSpore twins write it through
`finalize.finalize_run`, which calls `build_summary`; `validate_summary` checks a file against the
layout below (tests run it on the output of every trainer). Accuracies are fractions in [0, 1];
GFLOPs are per image and cumulative (exit k includes exits 1..k-1, `common.cumulative_gflops`);
lists indexed by exit are in exit order (coarsest token grid first).

    {
      "format": "dvt-run-summary", "version": 1,
      "framework": "torch" | "mindspore",
      "mode": "train" | "evaluate",
      "model": "dvt_tiny_digits",                 # registry name of the config
      "num_exits": K, "num_classes": C, "img_size": 32, "grids": [2, 3, 4],
      "dataset": {"name": "digits", "source": "...", "num_classes": C,
                  "sizes": {"train": 1078, "calib": 360, "test": 359}},
      "weights": {"checkpoint": "checkpoint.pth" | path, "ema": false,
                  "epochs_completed": 30 | null, "epochs": 30 | null},
      "gflops": [g_1, ..., g_K],                  # cumulative GFLOPs per image at each exit
      "top1": {"calib": [K], "test": [K]},         # each exit alone on the calibration / test split
      "thresholds": null | {                       # null for single-exit models
          "criterion": "confidence", "solved_on": "calib" | "train", "default_solver": "anchored",
          "solvers": {"<solver>": {"budgets": [B], "thresholds": [[K] x B],   # last -inf; "inf" closes an exit
                                   "calib_accuracy": [B], "calib_gflops": [B]}}},
      "curve": null | {                            # the thresholds applied to the test split
          "split": "test",
          "solvers": {"<solver>": {"budgets": [B], "gflops": [B], "accuracy": [B], "exit_fractions": [[K] x B]}}},
      "highlights": {"<solver>": {"best_accuracy", "best_accuracy_gflops",
                                  "matches_last_exit_gflops": float | null,  # cheapest test point at least
                                  "gflops_saving": float | null}},           # as accurate as the last exit
      "files": {"checkpoint": ..., "train_state": ... | null, "summary": "summary.json", "config": "config.json",
                "args": "args.yaml" | null, "log": "log.csv" | null, "calib_outputs": ..., "test_outputs": ...,
                "train_outputs": "train_outputs.npz" | null,   # only with --calibrate-on train
                "thresholds": "thresholds.json" | null, "plots": [...]},
      "timing": {"train_seconds": float | null, "finalize_seconds": float},
      "created_utc": "2025-01-01T00:00:00Z"
    }

Threshold values use `ThresholdCurve.to_dict`'s encoding ("inf" / "-inf" strings), so the file is
strict JSON.
"""
from __future__ import annotations

import datetime
import json
import math
import os

import numpy as np

from common.atomic import atomic_write_text
from common.config import DVTConfig
from common.thresholds import ExitOutputs, anytime_accuracy, exit_correct

SUMMARY_FORMAT = "dvt-run-summary"
SUMMARY_VERSION = 1
SUMMARY_KEYS = ("format", "version", "framework", "mode", "model", "num_exits", "num_classes", "img_size", "grids",
                "dataset", "weights", "gflops", "top1", "thresholds", "curve", "highlights", "files", "timing",
                "created_utc")
MODES = ("train", "evaluate")


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _highlights(test_top1: list[float], result: dict) -> dict:
    out = {}
    last_acc, last_gf = test_top1[-1], float(result["gflops"][-1])
    for name, solved in result["solvers"].items():
        acc = np.asarray(solved["test"]["accuracy"], dtype=np.float64)
        gf = np.asarray(solved["test"]["expected_gflops"], dtype=np.float64)
        best = int(np.lexsort((gf, -acc))[0])
        match = np.flatnonzero(acc >= last_acc)
        cheapest = float(gf[match].min()) if match.size else None
        out[name] = {"best_accuracy": float(acc[best]), "best_accuracy_gflops": float(gf[best]),
                     "matches_last_exit_gflops": cheapest,
                     "gflops_saving": None if cheapest is None else 1.0 - cheapest / last_gf}
    return out


def build_summary(*, framework: str, mode: str, cfg: DVTConfig, dataset: dict, weights: dict, calib: ExitOutputs,
                  test: ExitOutputs, threshold_result: dict | None, files: dict, timing: dict) -> dict:
    """The summary dict (layout in the module docstring) from the per-exit outputs of both splits and
    the result of `common.thresholds.pipeline.run_thresholds` (None for single-exit models)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    top1 = {"calib": _floats(anytime_accuracy(exit_correct(calib.logits, calib.labels))),
            "test": _floats(anytime_accuracy(exit_correct(test.logits, test.labels)))}
    thresholds = curve = None
    highlights = {}
    if threshold_result is not None:
        solvers = threshold_result["solvers"]
        thresholds = {"criterion": threshold_result["criterion"],
                      "solved_on": threshold_result.get("solved_on", "calib"),
                      "default_solver": threshold_result.get("default_solver"),
                      "solvers": {n: {"budgets": s["curve"]["budgets"], "thresholds": s["curve"]["thresholds"],
                                      "calib_accuracy": s["curve"]["accuracy"],
                                      "calib_gflops": s["curve"]["expected_gflops"]} for n, s in solvers.items()}}
        curve = {"split": "test",
                 "solvers": {n: {"budgets": s["curve"]["budgets"], "gflops": s["test"]["expected_gflops"],
                                 "accuracy": s["test"]["accuracy"], "exit_fractions": s["test"]["exit_fractions"]}
                             for n, s in solvers.items()}}
        highlights = _highlights(top1["test"], threshold_result)
    summary = {
        "format": SUMMARY_FORMAT, "version": SUMMARY_VERSION, "framework": framework, "mode": mode,
        "model": cfg.name, "num_exits": cfg.num_exits, "num_classes": cfg.num_classes, "img_size": cfg.img_size,
        "grids": list(cfg.grids), "dataset": dataset,
        "weights": {"checkpoint": None, "ema": False, "epochs_completed": None, "epochs": None, **weights},
        "gflops": _floats(calib.gflops), "top1": top1, "thresholds": thresholds, "curve": curve,
        "highlights": highlights, "files": files,
        "timing": {"train_seconds": None, "finalize_seconds": None, **timing},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    validate_summary(summary)
    return summary


def validate_summary(summary: dict) -> dict:
    """Raise ValueError unless `summary` follows the layout (keys, per-exit lengths, finite accuracies)."""
    if not isinstance(summary, dict):
        raise ValueError(f"a run summary is a dict, got {type(summary).__name__}")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    extra = sorted(set(summary) - set(SUMMARY_KEYS))
    if missing or extra:
        raise ValueError(f"run summary: missing keys {missing}, unexpected keys {extra}")
    if summary["format"] != SUMMARY_FORMAT or int(summary["version"]) > SUMMARY_VERSION:
        raise ValueError(f"not a run summary of a known version: {summary['format']!r} v{summary['version']}")
    k = summary["num_exits"]
    lists = {"grids": summary["grids"], "gflops": summary["gflops"], "top1.calib": summary["top1"]["calib"],
             "top1.test": summary["top1"]["test"]}
    for name, values in lists.items():
        if len(values) != k:
            raise ValueError(f"run summary: {name} has {len(values)} entries for {k} exits")
    for name in ("top1.calib", "top1.test"):
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in lists[name]):
            raise ValueError(f"run summary: {name} must hold fractions in [0, 1], got {lists[name]}")
    if (summary["thresholds"] is None) != (summary["curve"] is None):
        raise ValueError("run summary: thresholds and curve must both be present or both null")
    return summary


def write_summary(path: str | os.PathLike, summary: dict) -> None:
    validate_summary(summary)
    atomic_write_text(path, json.dumps(summary, indent=1, allow_nan=False) + "\n")


def load_summary(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as fh:
        return validate_summary(json.load(fh))
