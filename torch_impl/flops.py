"""fvcore FLOP counts of a DVT model, comparable with `common.flops` (DESIGN.md §4).

fvcore counts what the reference's ops cost: matmul/linear/conv (one multiply-add = 1), LayerNorm 5
per element, nearest upsampling and adaptive pooling 1 per element. Our grid resampling is a
matmul with the shared matrix A (see `models.resample`); traced, it shows up as one
`prim::PythonOp.GridResampleFn` node, charged here `resample_flops(s, t)` per s x s map, i.e.
exactly what fvcore charges the reference's upsample + adaptive pool (`NearestResampleFn`, the
MindSpore port's plain nearest resize: what fvcore charges its upsample). Everything else is fvcore's
own counting, so `fvcore_flops(model, k) == common.flops.cumulative_flops(cfg)[k - 1]`.

    fvcore_flops(model, num_exits=2)     # FLOPs (per image at batch 1) to reach exit 2
    fvcore_exit_flops(model)             # per-exit FLOPs from one trace of the full cascade
"""
from __future__ import annotations

import math
from functools import partial

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from common.resample import resample_flops

RESAMPLE_OPS = {"prim::PythonOp.GridResampleFn": "nearest_avgpool", "prim::PythonOp.NearestResampleFn": "nearest"}
RESAMPLE_OP = "prim::PythonOp.GridResampleFn"


def resample_flop_handle(inputs, outputs, mode: str = "nearest_avgpool") -> int:
    """fvcore handle: (..., s, s) -> (..., t, t) costs resample_flops(s, t, mode) per map."""
    src, dst = get_shape(inputs[0]), get_shape(outputs[0])
    return math.prod(src[:-2]) * resample_flops(src[-1], dst[-1], mode)


class _Prefix(nn.Module):
    """Traceable view of a DVT that runs exits 0..num_exits-1 and returns their logits."""

    def __init__(self, model: nn.Module, num_exits: int):
        super().__init__()
        self.model, self.num_exits = model, num_exits

    def forward(self, x: torch.Tensor):
        return tuple(out.logits for out in self.model.forward_exits(x, self.num_exits))


def flop_analysis(model: nn.Module, num_exits: int | None = None, batch_size: int = 1) -> FlopCountAnalysis:
    """An fvcore analysis of the exit prefix (module names under `model.`), warnings off."""
    cfg = model.config
    param = next(model.parameters())
    x = torch.zeros(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, dtype=param.dtype, device=param.device)
    wrapper = _Prefix(model, num_exits or cfg.num_exits)
    analysis = FlopCountAnalysis(wrapper, (x,))
    for op, mode in RESAMPLE_OPS.items():
        analysis = analysis.set_op_handle(op, partial(resample_flop_handle, mode=mode))
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def _run(model: nn.Module, fn):
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn()
    finally:
        model.train(training)


def fvcore_flops(model: nn.Module, num_exits: int | None = None, batch_size: int = 1) -> int:
    """Total fvcore FLOPs to run exits 0..num_exits-1 (default: all) on a zero batch."""
    return _run(model, lambda: flop_analysis(model, num_exits, batch_size).total())


def fvcore_exit_flops(model: nn.Module, batch_size: int = 1) -> list[int]:
    """FLOPs of each exit (reuse inside exit k is charged to exit k), from one trace."""
    def count():
        analysis = flop_analysis(model, None, batch_size)
        by_module = analysis.by_module()
        per_exit = [by_module[f"model.exits.{k}"] for k in range(model.config.num_exits)]
        if sum(per_exit) != analysis.total():
            raise AssertionError("FLOPs outside the exits: "
                                 f"{analysis.total() - sum(per_exit)} of {analysis.total()}")
        return per_exit
    return _run(model, count)
