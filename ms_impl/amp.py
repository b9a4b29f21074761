"""Mixed-precision policy for DVT on Ascend/GPU, applied with MindSpore's AMP mechanisms and switchable.

Policy (what runs in low precision `dtype`, float16 or bfloat16):

- 'O0'   everything float32 (also switches a converted model back: every cell is flagged float32).
- 'O1'   (recommended) the matmul-heavy cells: every `nn.Dense` and `nn.Conv2d` (qkv, proj, MLPs,
         token layers, T2T project, patch embedding, relation-reuse 1x1 convs) plus attn @ v, which
         follows v's dtype. The residual stream stays float32.
- 'O2'   all cells in `dtype` (residual stream included), except the float32 list below.
- 'auto' MindSpore's operator-level `auto_mixed_precision(net, 'auto')` (white list MatMul/Conv/Dense,
         black list Softmax/LayerNorm/Exp...), with the float32 list below pinned by `to_float`.

Always float32, at every level (FP32_CELLS): LayerNorm; `AttentionLogits` (q k^T * scale, the reused
logits add, the softmax: logits are also what the next exit reuses); the Performer's
`RandomFeatureAttention` (exp of random features and the linear-attention normalisation) and the
`TokenPerformer` container (so its frozen `w` is never rounded); the classifier `head` (logits and
confidences for early exit in float32).

Implementation: `Cell.to_float`, the per-cell flag under `mindspore.amp` O2/O3, applied to chosen cells
in place. Unlike `auto_mixed_precision('O1'/'O2')` it rewrites nothing and wraps nothing, so parameter
names, attributes, checkpoints and `forward_exits` are unchanged. ('O1' by source rewrite fails
on this model, and 'O2' wraps cells, which prefixes `_backbone.` to parameter paths.)
Loss scaling for training is the trainer's job (mindspore.amp.DynamicLossScaler).
"""
from __future__ import annotations

import mindspore as ms
import mindspore.common.dtype as mstype
from mindspore import nn

from .models.attention import AttentionLogits
from .models.tokenizers import RandomFeatureAttention, TokenPerformer

LEVELS = ("O0", "O1", "O2", "auto")
LOW_PRECISION_CELLS = (nn.Dense, nn.Conv2d)  # 'O1'
FP32_CELLS = (nn.LayerNorm, AttentionLogits, RandomFeatureAttention, TokenPerformer)
FP32_ATTRIBUTES = ("head",)  # cells kept float32 by name (the classifier of each exit)
_DTYPES = {"float16": mstype.float16, "fp16": mstype.float16, "bfloat16": mstype.bfloat16,
           "bf16": mstype.bfloat16}


def _resolve_dtype(dtype):
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"AMP dtype must be float16 or bfloat16, got {dtype!r}")
        return _DTYPES[dtype.lower()]
    if dtype not in (mstype.float16, mstype.bfloat16):
        raise ValueError(f"AMP dtype must be mindspore.float16 or mindspore.bfloat16, got {dtype!r}")
    return dtype


def _is_fp32(name: str, cell: nn.Cell) -> bool:
    return isinstance(cell, FP32_CELLS) or name.rsplit(".", 1)[-1] in FP32_ATTRIBUTES


def precision_plan(net: nn.Cell, level: str = "O1") -> dict[str, str]:
    """cell path -> 'low' | 'fp32' for every cell `apply_amp(net, level)` flags, parents before children."""
    if level not in LEVELS:
        raise ValueError(f"AMP level must be one of {LEVELS}, got {level!r}")
    plan = {}
    if level == "O0":
        return plan
    for name, cell in net.cells_and_names():
        if not name:
            continue
        if _is_fp32(name, cell):
            plan[name] = "fp32"
        elif level == "O2" or (level == "O1" and isinstance(cell, LOW_PRECISION_CELLS)):
            plan[name] = "low"
    return plan


def apply_amp(net: nn.Cell, level: str = "O1", dtype=mstype.float16) -> nn.Cell:
    """Apply the DVT mixed-precision policy at `level` in place and return `net`.

    Calling it again with another level switches policy ('O0' returns to float32 everywhere), except
    after 'auto', whose construct decoration MindSpore cannot undo (rebuild the model instead). Graphs
    the cell compiled in GRAPH mode are dropped, so its next call recompiles with the new precision;
    functions wrapped in `mindspore.jit` keep their own cache and must be wrapped again.
    """
    plan = precision_plan(net, level)
    if getattr(net, "_amp_level", None) == "auto":
        raise ValueError("this model was converted with amp level 'auto', which cannot be undone; rebuild it")
    if level == "auto" and _flagged(net):
        raise ValueError("amp level 'auto' needs a model without earlier to_float flags; rebuild it")
    dtype = _resolve_dtype(dtype) if level != "O0" else mstype.float32
    for _, cell in net.cells_and_names():
        cell.compile_cache.clear()  # a compiled graph would otherwise keep the old precision
    if _flagged(net):
        net.to_float(mstype.float32)  # reset: flags set by an earlier call must not survive
    if level == "O0":
        return net
    if level == "O2":
        net.to_float(dtype)
    # `to_float` is recursive and the plan is pre-order, so each cell's own entry wins over its parent's.
    cells = dict(net.cells_and_names())
    for name, precision in plan.items():
        cells[name].to_float(mstype.float32 if precision == "fp32" else dtype)
    if level == "auto":
        return ms.amp.auto_mixed_precision(net, "auto", dtype)
    return net


def _flagged(net: nn.Cell) -> bool:
    """Whether any cell carries a `to_float` precision flag."""
    return any(getattr(cell, "mixed_precision_type", None) is not None for _, cell in net.cells_and_names())


def reset_pynative_precision() -> None:
    """Clear PYNATIVE's process-wide "current precision" after a mixed-precision forward that raised.

    Why: a `to_float` cell sets the executor's mixed-precision type when it is called and resets it when it
    returns (`Cell._call_pre_process` / `_call_post_process` in MindSpore 2.10), with no `finally`. A forward
    that raises inside such a cell (bfloat16 on a CPU without bfloat16 kernels) leaves the type set, and
    every later PYNATIVE call of every model in the process casts its inputs: a fresh float32 model then
    fails with "Select CPU operator[Gather] fail" on bfloat16 (found through tools/precision_agreement.py's
    O1-bf16 run followed by the training-parity tests in one process)."""
    from mindspore._c_expression import MixedPrecisionType
    from mindspore.graph.api import _pynative_executor
    _pynative_executor.set_mixed_precision_type(MixedPrecisionType.NOTSET, False)
