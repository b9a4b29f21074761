"""What a run leaves in its output folder, named once for both trainers, and the small files about the run.

    files = run_files("torch")          # {"checkpoint": "checkpoint.pth", "train_state": "last_state.pth", ...}
    write_run_config(out, cfg, args)    # config.json (the DVTConfig) and args.yaml (reusable with --config)
    state = resolve_resume(args.resume, out, "torch")   # '' | path; 'auto' -> the output's last state if any
"""
from __future__ import annotations

import json
import os
from argparse import Namespace
from pathlib import Path

import yaml

from common.atomic import atomic_write_text
from common.config import DVTConfig

CHECKPOINT_SUFFIX = {"torch": ".pth", "mindspore": ".ckpt"}
PLOTS = ("accuracy_vs_gflops.png", "accuracy_vs_gflops_calibration.png", "exit_counts.png")
EASY_HARD_FILE = "easy_hard_examples.png"  # Fig. 9: written when the trainer hands finalize_run the test images
# Entries of args that are not flags (or must not be replayed) when args.yaml is passed back with --config.
_NOT_REPLAYED = ("config", "framework", "resume")


def run_files(framework: str) -> dict:
    """File names inside --output: weights, resume state, summary, config, args, log, outputs, thresholds."""
    if framework not in CHECKPOINT_SUFFIX:
        raise ValueError(f"framework must be one of {sorted(CHECKPOINT_SUFFIX)}, got {framework!r}")
    suffix = CHECKPOINT_SUFFIX[framework]
    return {"checkpoint": f"checkpoint{suffix}", "train_state": f"last_state{suffix}", "summary": "summary.json",
            "config": "config.json", "args": "args.yaml", "log": "log.csv", "calib_outputs": "calib_outputs.npz",
            "test_outputs": "test_outputs.npz", "train_outputs": None, "thresholds": "thresholds.json",
            "plots": list(PLOTS)}  # train_outputs: "train_outputs.npz" when a run calibrates on the training split


def args_to_dict(args: Namespace) -> dict:
    """Flag values as plain YAML types (tuples -> lists), without the entries that are not replayable."""
    out = {}
    for key, value in sorted(vars(args).items()):
        if key in _NOT_REPLAYED:
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def write_run_config(out_dir: str | os.PathLike, cfg: DVTConfig, args: Namespace | None, framework: str) -> None:
    """config.json (the model's DVTConfig, `DVTConfig.from_dict` reads it back) and args.yaml."""
    out = Path(out_dir)
    files = run_files(framework)
    atomic_write_text(out / files["config"], json.dumps(cfg.to_dict(), indent=1) + "\n")
    if args is not None:
        atomic_write_text(out / files["args"], yaml.safe_dump(args_to_dict(args), sort_keys=True))


def resolve_resume(resume: str, out_dir: str | os.PathLike, framework: str) -> str:
    """The training-state file to resume from: '' (start fresh), the given path, or with 'auto' the
    output folder's last state when there is one. A named file that does not exist is an error."""
    if not resume:
        return ""
    if resume == "auto":
        path = Path(out_dir) / run_files(framework)["train_state"]
        return str(path) if path.is_file() else ""
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume {resume!r}: no such file (expected a {run_files(framework)['train_state']} "
                                "written by a previous run, or 'auto')")
    return resume
