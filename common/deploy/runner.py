"""The host-side early-exit loop over exported graphs: the same bookkeeping and exit rule as `forward_adaptive`.

    runner = load_runner("exports/t2t12")                  # backend from the manifest: onnxruntime or mindspore
    res = runner.run(images, [0.83, 0.71])                 # images: float32 (B, C, H, W)
    res = runner.run(images, budget=2.0)                   # the manifest's budget curve
    res.logits (B, classes) float32, res.exit_index (B,) int64 (0-based), res.exit_counts, res.gflops (B,)

Exit k's graph runs on the rows still in the cascade, fed with exactly what it reuses from exit k-1 (the
rows that stay, gathered with numpy); the decision after exit k is `common.adaptive.leave_mask` on its
logits and the rows are tracked by `common.adaptive.ExitTracker`, as in torch_impl's and ms_impl's
`adaptive_forward`, so the decisions equal the offline rule on the graphs' logits. With fixed batch sizes
each exit's rows are cut and padded by `batching.batch_plan` (policy "pad": the smallest size that holds
them, larger groups split; "fit": least pad rows + calls); pad rows are dropped.

A backend is an object with `name`, `run(k, batch_size, feeds) -> outputs` (numpy arrays in the order of
the manifest's inputs / outputs of exit k; batch_size None for a dynamic-batch graph) and `info()`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.adaptive import ExitTracker, leave_mask

from .batching import POLICIES, batch_plan, take_padded
from .manifest import DeployError, Manifest, read_manifest
from .thresholds import manifest_curve, run_thresholds


class RunResult(NamedTuple):
    logits: np.ndarray  # (B, num_classes) float32: the logits of the exit each row left at, in input order
    exit_index: np.ndarray  # (B,) int64, 0-based
    exit_counts: tuple  # (K,) rows leaving at each exit
    gflops: np.ndarray  # (B,) float64: cumulative GFLOPs of the exit each row left at
    padded_rows: tuple  # (K,) pad rows run at each exit (0 with a dynamic batch)
    graph_calls: tuple  # (K,) graph executions at each exit


class ExportRunner:
    """Early exit over the graphs of one export, on one backend."""

    def __init__(self, manifest: Manifest, backend, batching: str = "pad"):
        if batching not in POLICIES:
            raise DeployError(f"unknown batching policy {batching!r}; expected one of {', '.join(POLICIES)}")
        self.manifest = manifest
        self.backend = backend
        self.batching = batching
        self.num_exits = manifest.num_exits
        self.sizes = manifest.batch_sizes
        self._gflops = manifest.gflops

    @property
    def curve(self):
        """The budget curve the export carries (ThresholdCurve), or None."""
        return manifest_curve(self.manifest.thresholds)

    def check_images(self, images) -> np.ndarray:
        """float32 (B, C, H, W) as the manifest says, C-contiguous; DeployError naming the expectation."""
        c, h, w = self.manifest.input_shape
        expected = f"float32 images of shape (B, {c}, {h}, {w}) (model {self.manifest.name})"
        if not isinstance(images, np.ndarray):
            raise DeployError(f"expected {expected} as a numpy array, got {type(images).__name__}")
        if images.dtype != np.float32:
            raise DeployError(f"expected {expected}, got dtype {images.dtype}: convert with "
                              ".astype(np.float32) after normalising (common.deploy.preprocess_image_file)")
        if images.ndim != 4 or images.shape[1:] != (c, h, w):
            raise DeployError(f"expected {expected}, got shape {images.shape}")
        return np.ascontiguousarray(images)

    def run_stage(self, k: int, feeds: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
        """Exit k on all rows of `feeds` -> (outputs, pad rows, graph calls)."""
        n = feeds[0].shape[0]
        chunks, pads = [], 0
        plan = batch_plan(n, self.sizes, self.batching)
        for start, stop, size in plan:
            rows = stop - start
            out = self.backend.run(k, size, [take_padded(f, start, stop, size) for f in feeds])
            if size is not None and size != rows:
                pads += size - rows
                out = [o[:rows] for o in out]
            chunks.append(out)
        if len(chunks) == 1:
            return list(chunks[0]), pads, 1
        return [np.concatenate(parts) for parts in zip(*chunks)], pads, len(plan)

    def run(self, images, thresholds=None, criterion: str | None = None, *,
            budget: float | None = None) -> RunResult:
        """Early exit on a batch. `thresholds`: K-1 or K numbers, (B, K-1) / (B, K) numbers (one row per image),
        or a ThresholdCurve with `budget` (one number or (B,) per image); None: with `budget` the manifest's
        curve, else the manifest's fixed thresholds (`thresholds.run_thresholds`)."""
        x = self.check_images(images)
        t, criterion = run_thresholds(self.manifest.thresholds, self.num_exits, thresholds, criterion, budget,
                                      batch_size=x.shape[0])
        k_exits = self.num_exits
        track = ExitTracker(x.shape[0], k_exits, t)
        pads, calls = [0] * k_exits, [0] * k_exits
        pieces = []  # logits of the leaving rows, stage by stage
        feeds = [x]
        for k in range(k_exits):
            if track.done:
                break  # empty stage: nothing runs
            outputs, pads[k], calls[k] = self.run_stage(k, feeds)
            logits = outputs[0]
            last = k == k_exits - 1  # the last exit takes everyone
            step = track.record(k, None if last else leave_mask(logits, track.active_thresholds(), k, criterion))
            if step.num_left:
                pieces.append(logits if step.leave is None else logits[step.leave])
            if step.done:
                break  # every row has left: later exits never run
            carried = outputs[1:]  # what exit k+1 reuses, in its input order (signature.py)
            if step.keep is None:
                feeds = [feeds[0]] + carried
            else:
                feeds = [x[track.rows]] + [np.take(c, step.keep, axis=0) for c in carried]
        inverse = track.inverse_order()
        if not pieces:
            logits = np.zeros((0, self.manifest.num_classes), dtype=np.float32)
        else:
            logits = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            if inverse is not None:
                logits = logits[inverse]
        exit_index = track.exit_index
        return RunResult(np.ascontiguousarray(logits, dtype=np.float32), exit_index, tuple(track.counts),
                         self._gflops[exit_index], tuple(pads), tuple(calls))

    def run_cascade(self, images) -> list[np.ndarray]:
        """Every exit on every row (the full cascade): K logits arrays (B, num_classes)."""
        x = self.check_images(images)
        feeds, logits = [x], []
        for k in range(self.num_exits):
            outputs = self.run_stage(k, feeds)[0]
            logits.append(outputs[0])
            feeds = [x] + outputs[1:]
        return logits


def load_runner(export_dir, backend: str = "auto", *, device: str = "auto", threads: int | None = None,
                batching: str = "pad", verify: bool = True) -> ExportRunner:
    """The runner of an export folder. `backend`: "auto" (the manifest's graph format decides),
    "onnxruntime" / "onnx" or "mindspore" / "mindir"; `device`: "auto" | "cpu" | "cuda" (ONNX Runtime's CUDA
    execution provider) | "gpu" / "ascend" (MindSpore); `threads`: CPU threads of the backend; `batching`:
    how fixed batch sizes are filled ("pad" | "fit", `batching.py`). Every graph file's sha256 is checked
    against the manifest first (`verify`)."""
    from .backends import create_backend
    manifest = read_manifest(export_dir, verify=verify)
    return ExportRunner(manifest, create_backend(manifest, backend, device=device, threads=threads), batching)

