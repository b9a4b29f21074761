"""Multi-head self-attention that writes its logits out and hands them back.

DVT's relationship reuse needs the pre-softmax logits of every block, and fvcore only counts
attention written as explicit matmuls (it skips `scaled_dot_product_attention`), so the math is
spelled out: `a = q @ k^T * scale (+ reused)`, `softmax(a) @ v`. The returned logits include the
reused part, as in the reference, because that sum is what the next exit reuses.

`need_logits=False` is for a caller that throws the logits away (the last exit of adaptive inference,
`adaptive.py`): the same attention then runs as one fused `scaled_dot_product_attention` with the reused
logits as its additive mask, and the logits come back as None. Outputs agree with the explicit path
within fp32 rounding; FLOPs tools keep using the default (explicit) path, which fvcore counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """`forward(x, reused_logits=None, need_logits=True) -> (out (B,T,D), logits (B,H,T,T) or None)`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale if scale is not None else self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, reused_logits: torch.Tensor | None = None, need_logits: bool = True):
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if not need_logits:  # fused kernel: softmax(q k^T * scale + reused) v, logits never materialised
            mask = None if reused_logits is None else reused_logits.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                 dropout_p=self.attn_drop.p if self.training else 0.0)
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, D))), None
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if reused_logits is not None:
            logits = logits + reused_logits
        attn = self.attn_drop(logits.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj_drop(self.proj(out)), logits
