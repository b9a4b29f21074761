"""Deployment: every exit as its own graph, and the host-side early-exit loop that runs them.

    python tools/export.py CHECKPOINT --out DIR --format onnx|mindir [--batch-sizes 1,8,32,64 | --dynamic-batch]
    runner = load_runner(DIR)                        # ONNX Runtime or MindSpore, from DIR/manifest.json
    res = runner.run(images, thresholds)             # logits, exit_index (0-based), exit_counts, gflops
    row = preprocess_image_file("cat.jpg", runner.manifest)   # (C, H, W) float32, as torch_impl/evaluate.py

Framework-neutral (numpy, PIL): `signature` (each exit's graph inputs and outputs), `manifest`, `batching`
(fixed batch sizes: padding and splitting), `runner`, `preprocess`, `thresholds`, `staging`, the ONNX
Runtime backend. The exporters are `torch_impl/export.py` (ONNX) and `ms_impl/export.py` (MINDIR, and its
backend); nothing here imports torch or MindSpore.
"""
from .manifest import DeployError, Manifest, read_manifest
from .preprocess import eval_preprocessing, preprocess_image, preprocess_image_file
from .runner import ExportRunner, RunResult, load_runner

__all__ = ["DeployError", "ExportRunner", "Manifest", "RunResult", "eval_preprocessing", "load_runner",
           "preprocess_image", "preprocess_image_file", "read_manifest"]
