"""Thresholds that travel with an export, and the ones a run uses.

At export time `--thresholds` is either a list of numbers ("0.83,0.71": K-1 or K values) or a JSON file: a
run's `thresholds.json` (format "dvt-threshold-results": its `default_solver`'s curve, as
`ThresholdCurve.load` picks it, or `solver=`) or a single `ThresholdCurve` dict. The manifest keeps

    {"criterion": ..., "fixed": [t_1, ..., -inf] | null, "curve": ThresholdCurve.to_dict() | null,
     "solver": ..., "source": {"path", "sha256"} | null}

and checks that a curve was solved for this model (same number of exits and cumulative GFLOPs).
At run time `run_thresholds` turns the caller's choice (numbers, a curve with a budget, a budget alone with
the manifest's curve, or nothing: the manifest's fixed thresholds) into `common.adaptive.resolve_thresholds`'s
(K,) float64 thresholds and criterion, the same call `forward_adaptive` makes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.adaptive import resolve_thresholds
from common.benchmark import encode_thresholds
from common.config import DVTConfig
from common.convert import sha256_file
from common.flops import cumulative_gflops
from common.thresholds.curve import CURVE_FORMAT, ThresholdCurve, curve_from_results

from .manifest import DeployError

RESULTS_FORMAT = "dvt-threshold-results"


def parse_numbers(text: str) -> list[float] | None:
    """'0.83,0.71' -> [0.83, 0.71]; None when the text is not a list of numbers (then it is a file)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        return [float(p) for p in parts if p]  # float() also reads inf / -inf
    except ValueError:
        return None


def _curve_from_file(path: Path, solver: str | None) -> tuple[ThresholdCurve, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeployError(f"--thresholds {path}: cannot read it as JSON ({type(err).__name__}: {err})") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    try:
        if fmt == RESULTS_FORMAT:  # the run's default_solver, as ThresholdCurve.load picks it
            try:
                curve = curve_from_results(data, solver)
            except ValueError as err:
                raise DeployError(f"--thresholds {path}: {err}") from None
            return curve, curve.solver
        if fmt == CURVE_FORMAT:
            curve = ThresholdCurve.from_dict(data)
            return curve, curve.solver
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, DeployError):
            raise
        raise DeployError(f"--thresholds {path}: damaged threshold file ({type(err).__name__}: {err})") from None
    raise DeployError(f"--thresholds {path}: expected a run's thresholds.json (format {RESULTS_FORMAT!r}) or a "
                      f"threshold curve (format {CURVE_FORMAT!r}), got format {fmt!r}")


def thresholds_entry(spec: str, cfg: DVTConfig, solver: str | None = None) -> dict:
    """The manifest's `thresholds` entry for `--thresholds SPEC` (numbers or a file)."""
    numbers = parse_numbers(spec)
    if numbers is not None and numbers:
        try:
            fixed, criterion = resolve_thresholds(numbers, cfg.num_exits)
        except ValueError as err:
            raise DeployError(f"--thresholds {spec}: {err}") from None
        return {"criterion": criterion, "fixed": encode_thresholds(fixed), "curve": None, "solver": None,
                "source": None}
    path = Path(spec)
    if not path.is_file():
        raise DeployError(f"--thresholds {spec}: neither numbers (e.g. 0.83,0.71) nor an existing file")
    curve, name = _curve_from_file(path, solver)
    gflops = np.asarray(cumulative_gflops(cfg))
    if curve.num_exits != cfg.num_exits or not np.allclose(curve.gflops, gflops, rtol=1e-6, atol=0):
        raise DeployError(f"--thresholds {spec}: the curve was solved for {curve.num_exits} exits with cumulative "
                          f"GFLOPs {np.round(curve.gflops, 6).tolist()}, but {cfg.name} has {cfg.num_exits} exits "
                          f"with {np.round(gflops, 6).tolist()}: thresholds of another model")
    return {"criterion": curve.criterion, "fixed": None, "curve": curve.to_dict(), "solver": name,
            "source": {"path": str(path), "sha256": sha256_file(path)}}


def manifest_curve(entry: dict | None) -> ThresholdCurve | None:
    return ThresholdCurve.from_dict(entry["curve"]) if entry and entry.get("curve") else None


def run_thresholds(entry: dict | None, num_exits: int, thresholds=None, criterion: str | None = None,
                   budget=None, batch_size: int | None = None) -> tuple[np.ndarray, str]:
    """(thresholds (K,) or (B, K) float64, criterion) for one run of `batch_size` images.

    `thresholds`: numbers ((K-1,), (K,) or one row per image) or a ThresholdCurve (with `budget`: one number
    or one per image), as for `forward_adaptive`; None: with `budget` the manifest's curve, without it the
    manifest's fixed thresholds.
    """
    if thresholds is None:
        if budget is not None:
            curve = manifest_curve(entry)
            if curve is None:
                raise DeployError("a budget needs a threshold curve: this export carries none (export it with "
                                  "--thresholds RUN/thresholds.json), or pass thresholds")
            return resolve_thresholds(curve, num_exits, criterion, budget, batch_size=batch_size)
        if not entry or entry.get("fixed") is None:
            curve = manifest_curve(entry)
            hint = (f"; its curve covers budgets {curve.expected_gflops.min():.6g} to "
                    f"{curve.expected_gflops.max():.6g} GFLOPs per image" if curve is not None else "")
            raise DeployError("no thresholds given and the export carries no fixed thresholds: pass thresholds "
                              f"(one per exit but the last) or a budget{hint}")
        fixed = [float(v) for v in entry["fixed"]]  # "inf" / "-inf" strings included
        return resolve_thresholds(fixed, num_exits, criterion or entry.get("criterion"))
    return resolve_thresholds(thresholds, num_exits, criterion, budget, batch_size=batch_size)
