"""ONNX export of a DVT: one graph per exit (and per batch size), run by `common.deploy`'s host loop.

    records = export_graphs(model, folder, batch_sizes=(1, 8, 32, 64))   # or batch_sizes=None: dynamic batch
    checks = verify_graphs(model, folder, records)                       # every graph vs the eager model

Exit k's graph is `ExportStage(model, k)`: inputs and outputs exactly as `common.deploy.signature` declares
(the image rows and what exit k reuses; the logits and what exit k+1 reuses). An exit whose attention logits
no later exit reuses (always the last) runs `scaled_dot_product_attention`, the fused kernel of adaptive
inference (`need_relations=False`), and the reused relations use the matmul kernels of the fast path
(`ViTExit.reuse_relations(fast=True)`); the graphs equal the eager stages within fp32 rounding.

Exporter: `torch.onnx.export(..., dynamo=False)` (TorchScript tracing), opset 17. Measured here on torch
2.15: the dynamo exporter fails on the last exit with a dynamic batch (its decomposition of
`scaled_dot_product_attention` views a transposed tensor: "Cannot view a tensor with shape [s0, 17, 4, 16]")
and takes about 20 s per graph of a tiny model against 0.6 s for tracing, which exports every exit of every
registered config and matches the eager stages to ~1e-7 (tiny) / ~1e-6 (full size, random weights).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config import DVTConfig
from common.deploy.manifest import DeployError, graph_file_name
from common.deploy.verify import compare_outputs
from common.deploy.signature import sends_features, sends_relations, stage_inputs, stage_outputs

from .models import DVT

FRAMEWORK = "torch"
GRAPH_FORMAT = "onnx"
NAMING = "canonical"  # the tensor names `model_from_tensors` takes (common.naming)
OPSET = 17
TRACE_BATCH = 2  # example batch of a dynamic-batch export (1 could be specialised away)


class ExportStage(nn.Module):
    """Exit k as one graph: `forward(x, *reused) -> (logits, *what exit k+1 reuses)` (common.deploy.signature)."""

    def __init__(self, model: DVT, k: int):
        super().__init__()
        cfg = model.config
        self.exit_ = model.exits[k]
        self.depth = cfg.depth
        self.send_features = sends_features(cfg, k)
        self.send_relations = sends_relations(cfg, k)

    def forward(self, x, *reused):
        features = reused[0] if self.exit_.feature_reuse else None
        relations = tuple(reused[len(reused) - self.depth:]) if self.exit_.relation_reuse else None
        logits, feats, rels = self.exit_(x, features, relations, need_relations=self.send_relations, fast=True)
        return (logits,) + ((feats,) if self.send_features else ()) + (tuple(rels) if self.send_relations else ())


def attention(cfg: DVTConfig) -> list[str]:
    """How each exit's graph computes attention (recorded in the manifest)."""
    return [f"explicit: exit {k + 2} reuses the attention logits" if sends_relations(cfg, k)
            else "fused scaled_dot_product_attention (no later exit reuses the logits)" for k in range(cfg.num_exits)]


def framework_versions() -> dict:
    out = {"torch": torch.__version__}
    for name in ("onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def export_options() -> dict:
    return {"exporter": "torch.onnx.export (TorchScript tracing, dynamo=False)", "opset": OPSET,
            "constant_folding": True}


def model_from_tensors(cfg: DVTConfig, tensors: dict) -> DVT:
    """A DVT in eval mode holding `tensors` (canonical names -> numpy arrays, as `common.convert` gives)."""
    model = DVT(cfg)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    with torch.no_grad():
        nn.Module.load_state_dict(model, state, strict=True)
    return model.eval()


def random_model(cfg: DVTConfig, seed: int = 0) -> DVT:
    """A DVT with the framework's seeded random initialisation (benchmarks: speed does not depend on weights)."""
    torch.manual_seed(seed)
    return DVT(cfg).eval()


def random_inputs(cfg: DVTConfig, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)


@torch.no_grad()
def eager_stages(model: DVT, x: torch.Tensor) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Per exit, the (inputs, outputs) of its `ExportStage` run eagerly on every row of `x`, as numpy."""
    out, reused = [], ()
    for k in range(model.num_exits):
        args = (x,) + reused
        res = ExportStage(model, k).eval()(*args)
        out.append(([a.numpy() for a in args], [r.numpy() for r in res]))
        reused = tuple(res[1:])
    return out


def _export_one(stage: ExportStage, args: tuple, path: Path, cfg: DVTConfig, k: int, dynamic: bool) -> None:
    inputs = [s.name for s in stage_inputs(cfg, k)]
    outputs = [s.name for s in stage_outputs(cfg, k)]
    axes = {name: {0: "batch"} for name in inputs + outputs} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic and the exporter's deprecation notice
        torch.onnx.export(stage, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


@torch.no_grad()
def export_graphs(model: DVT, folder, batch_sizes=None, progress=None) -> list[dict]:
    """Write one ONNX graph per exit and batch size (None: one dynamic-batch graph per exit) into `folder`.

    Returns [{"exit", "batch_size", "file", "seconds"}]; DeployError when the exporter cannot handle a stage.
    """
    model = model.eval()
    cfg = model.config
    folder = Path(folder)
    records = []
    for k in range(model.num_exits):
        stage = ExportStage(model, k).eval()
        for size in (batch_sizes or [None]):
            start = time.perf_counter()
            x = random_inputs(cfg, size or TRACE_BATCH)
            args = (x,) + tuple(torch.zeros(s.with_batch(size or TRACE_BATCH).shape) for s in stage_inputs(cfg, k)[1:])
            name = graph_file_name(k, size, GRAPH_FORMAT)
            try:
                _export_one(stage, args, folder / name, cfg, k, size is None)
            except Exception as err:  # the exporter's own error types vary by torch version
                raise DeployError(f"the ONNX exporter cannot handle exit {k + 1} of {cfg.name}: "
                                  f"{type(err).__name__}: {err}") from err
            records.append({"exit": k, "batch_size": size, "file": name,
                            "seconds": round(time.perf_counter() - start, 3)})
            if progress:
                progress(f"exit {k + 1}/{cfg.num_exits}, batch {size or 'dynamic'}: {name}")
    return records


@torch.no_grad()
def verify_graphs(model: DVT, folder, records: list[dict], seed: int = 0, tolerance: float = 1e-4) -> list[dict]:
    """Run every exported graph with ONNX Runtime on random images (and the reused tensors the eager model
    computes from them) and compare each output with the eager stage: [{"exit", "batch_size", "rows",
    "max_abs_diff": {output: float}}]. DeployError when a difference exceeds `tolerance` x max(1, |output|).
    Skipped ([]) where onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    cfg = model.config
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    checks = []
    for size in sorted({r["batch_size"] for r in records}, key=lambda s: s or 0):
        rows = size or TRACE_BATCH + 1  # a dynamic graph at another batch than it was traced with
        stages = eager_stages(model, random_inputs(cfg, rows, seed))
        for r in (r for r in records if r["batch_size"] == size):
            inputs, expected = stages[r["exit"]]
            sess = ort.InferenceSession(str(Path(folder) / r["file"]), options, providers=["CPUExecutionProvider"])
            names = [s.name for s in stage_inputs(cfg, r["exit"])]
            got = sess.run(None, dict(zip(names, inputs)))
            checks.append(compare_outputs(cfg, r, rows, got, expected, tolerance))
    return checks

