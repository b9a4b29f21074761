"""Multi-head self-attention that writes its logits out and hands them back.

DVT's relationship reuse needs the pre-softmax logits of every block, so the math is spelled out:
`a = q @ k^T * scale (+ reused)`, `softmax(a) @ v`. The returned logits include the reused part, as in
the reference, because that sum is what the next exit reuses.

MindSpore-specific: logits, the reused add and the softmax sit in `AttentionLogits`, a parameterless
float32 island. Being its own cell lets every MindSpore mixed-precision mechanism (`to_float` flags,
`amp_level='auto'`) keep it in float32 (`ms_impl/amp.py`); in a float32 model its casts are no-ops.

Heads are split and merged without MindSpore's CPU Transpose / StridedSlice kernels and `k^T` is a
`BatchMatMul` flag (`layers.py`: in GRAPH mode those kernels keep per-element tables for the graph's
lifetime); the values are bit for bit those of the reshape + permute formulation.

`need_logits=False` mirrors torch_impl (the caller throws the logits away: the last exit of adaptive
inference) and returns None for them. The math stays explicit here: MindSpore 2.10 has no fused attention
kernel on CPU (`ops.flash_attention_score` and `ops.fused_infer_attention_score` are unregistered there,
`ops.prompt_flash_attention` takes float16/bfloat16 only), so the outputs are those of the default path.
"""
from __future__ import annotations

import mindspore.common.dtype as mstype
from mindspore import nn, ops

from .layers import bmm, bmm_nt, dropout, linear, merge_heads, split_heads


class AttentionLogits(nn.Cell):
    """(q, k[, reused]) -> (logits, softmax(logits)), both float32; logits = (q @ k^T) * scale [+ reused]."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def construct(self, q, k, reused=None):
        logits = bmm_nt(q.astype(mstype.float32), k.astype(mstype.float32)) * self.scale
        if reused is not None:
            logits = logits + reused.astype(mstype.float32)
        return logits, ops.softmax(logits, axis=-1)

    def extend_repr(self):
        return f"scale={self.scale}"


class Attention(nn.Cell):
    """`construct(x, reused_logits=None, need_logits=True) -> (out (B,T,D), logits (B,H,T,T) or None)`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale if scale is not None else self.head_dim ** -0.5
        self.qkv = linear(dim, dim * 3, bias=qkv_bias)
        self.attn_logits = AttentionLogits(self.scale)
        self.attn_drop = dropout(attn_drop)
        self.proj = linear(dim, dim)
        self.proj_drop = dropout(proj_drop)

    def construct(self, x, reused_logits=None, need_logits=True):
        q, k, v = split_heads(self.qkv(x), 3, self.num_heads)
        logits, attn = self.attn_logits(q, k, reused_logits)
        attn = self.attn_drop(attn)
        out = merge_heads(bmm(attn.astype(v.dtype), v))
        if not need_logits:  # no fused kernel on CPU (module docstring): same math, logits dropped
            return self.proj_drop(self.proj(out)), None
        return self.proj_drop(self.proj(out)), logits
