"""What the service runs: a model behind one small interface, from a checkpoint or an export folder.

    backend = load_backend("runs/digits/checkpoint.pth", "torch")        # or an export folder, "onnx"
    out = backend.run(images, thresholds)     # images float32 (B, C, H, W); thresholds (K,) or (B, K)
    out.logits (B, classes) float32, out.exit_index (B,) int64 (0-based)

A backend has `name`, `model_name`, `num_exits`, `num_classes`, `gflops` (K,) cumulative, `input_shape`
(C, H, W), `preprocessing` (the evaluation transform, `common.deploy.eval_preprocessing`), `curve` (the
ThresholdCurve it carries, or None), `run(images, thresholds)` (early exit, per-row thresholds allowed) and
`cascade(images)` (every exit on every row: (K, B, classes), for offline references). The framework
backends are `torch_impl.serving.TorchBackend` and `ms_impl.serving.MindSporeBackend` (each loads a
checkpoint of its framework and calls its `forward_adaptive`); exported graphs run through
`common.deploy`'s runner (`ExportBackend`). Nothing here imports torch or MindSpore.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.deploy.thresholds import thresholds_entry
from common.thresholds.curve import ThresholdCurve, curve_from_results

BACKENDS = ("torch", "mindspore", "onnx")


class BackendOutput(NamedTuple):
    logits: np.ndarray  # (B, classes) float32, in input order
    exit_index: np.ndarray  # (B,) int64, 0-based


def curve_from_extras(raw, solver: str | None = None, where: str = "checkpoint") -> ThresholdCurve | None:
    """The budget curve a checkpoint carries (the trainers write `{"thresholds": {solver: curve}, "default_solver"}`
    beside the weights): `solver`'s, else the run's default (`ThresholdCurve.load`); None when it carries none."""
    entry = raw.get("thresholds") if isinstance(raw, dict) else None
    if isinstance(entry, (str, bytes)):
        entry = json.loads(entry)
    if not entry:
        if solver:
            raise ValueError(f"{where}: carries no threshold curves, so --solver {solver} has nothing to pick")
        return None
    try:
        return curve_from_results({"thresholds": entry, "default_solver": raw.get("default_solver")}, solver)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def curve_from_file(path, cfg, solver: str | None = None) -> ThresholdCurve:
    """A run's thresholds.json or a ThresholdCurve JSON, checked to belong to the model of `cfg`."""
    entry = thresholds_entry(str(path), cfg, solver)
    if entry["curve"] is None:
        raise ValueError(f"--thresholds {path}: the service needs a budget curve (a run's thresholds.json or a "
                         "curve file), not fixed numbers")
    return ThresholdCurve.from_dict(entry["curve"])


class ExportBackend:
    """An export folder (`tools/export.py`) through `common.deploy.load_runner` (ONNX Runtime or MINDIR)."""

    def __init__(self, export_dir, backend: str = "onnx", threads: int | None = None):
        from common.deploy import load_runner

        self.runner = load_runner(export_dir, backend, threads=threads)
        m = self.runner.manifest
        self.name = "onnx" if backend in ("onnx", "onnxruntime") else backend
        self.model_name, self.num_exits, self.num_classes = m.name, m.num_exits, m.num_classes
        self.gflops = np.asarray(m.gflops, dtype=np.float64)
        self.input_shape = tuple(m.input_shape)
        self.preprocessing = m.preprocessing
        self.curve = self.runner.curve

    def run(self, images: np.ndarray, thresholds) -> BackendOutput:
        res = self.runner.run(np.ascontiguousarray(images, dtype=np.float32), thresholds)
        return BackendOutput(res.logits, np.asarray(res.exit_index, dtype=np.int64))

    def cascade(self, images: np.ndarray) -> np.ndarray:
        return np.stack(self.runner.run_cascade(np.ascontiguousarray(images, dtype=np.float32)))


def is_export_dir(source) -> bool:
    return Path(source).is_dir() and (Path(source) / "manifest.json").is_file()


def default_backend(source) -> str:
    if is_export_dir(source):
        return "onnx"
    return "mindspore" if Path(source).suffix == ".ckpt" else "torch"


def load_backend(source, backend: str | None = None, *, threads: int | None = None, model: str | None = None,
                 thresholds=None, solver: str | None = None):
    """The backend for a checkpoint file or an export folder. `backend`: torch / mindspore (checkpoints),
    onnx (export folders); default from the source. `thresholds`: a thresholds.json / curve file that replaces
    the curve the source carries."""
    source = Path(source)
    backend = backend or default_backend(source)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if not source.exists():
        raise ValueError(f"{source}: no such checkpoint file or export folder")
    if is_export_dir(source):
        if backend != "onnx":
            raise ValueError(f"{source} is an export folder: serve it with --backend onnx (a checkpoint file is "
                             f"needed for --backend {backend})")
        out = ExportBackend(source, "onnx", threads)
        cfg = None
    else:
        if source.is_dir():
            raise ValueError(f"{source}: a folder without manifest.json is no export (tools/export.py writes one)")
        if backend == "onnx":
            raise ValueError(f"--backend onnx serves an export folder (tools/export.py CHECKPOINT --out DIR "
                             f"--format onnx); {source} is a file")
        if backend == "torch":
            from torch_impl.serving import TorchBackend
            out = TorchBackend.from_checkpoint(source, model=model, threads=threads, solver=solver)
        else:
            from ms_impl.serving import MindSporeBackend
            out = MindSporeBackend.from_checkpoint(source, model=model, threads=threads, solver=solver)
        cfg = out.config
    if thresholds is not None:
        cfg = cfg or out.runner.manifest.config
        out.curve = curve_from_file(thresholds, cfg, solver)
    return out
