"""Multi-head self-attention that writes its logits out and hands them back.

DVT's relationship reuse needs the pre-softmax logits of every block, and fvcore only counts
attention written as explicit matmuls (it skips `scaled_dot_product_attention`), so the math is
spelled out: `a = (q * scale) @ k^T (+ reused)`, `softmax(a) @ v`. The returned logits include the
reused part, as in the reference, because that sum is what the next exit reuses. The scale goes on q
(T x head_dim numbers, not T x T) and the reused maps are added in place: one T x T buffer per block
instead of three. For head_dim 64 (every reference model) the scale is 1/8, a power of two, so this is
bit for bit the reference's `(q @ k^T) * scale`.

`need_logits=False` is for a caller that does not need the logits now: the same attention runs as one
fused `scaled_dot_product_attention` with the reused logits as its additive mask. The logits come back
as None, or as what computes them later for the rows that still need them (adaptive inference:
"deferred relations", computed after the exit decision for the samples that go on to the next exit):
`keep="qk"` returns the pair (q, k) for `logits(q[rows], k[rows], reused[rows])`; `keep="input"` returns
the attention's input x, from which `qk(x[rows])` recomputes them (less memory, more work). Outputs agree
with the explicit path within fp32 rounding; FLOPs tools keep using the default (explicit) path, which
fvcore counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """`forward(x, reused_logits=None, need_logits=True, keep=None) -> (out (B,T,D), logits)`.

    logits: (B,H,T,T) with `need_logits`; else None, (q, k) (each (B,H,T,head_dim)) with `keep="qk"`,
    or x with `keep="input"`.
    """

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

    def forward(self, x: torch.Tensor, reused_logits: torch.Tensor | None = None, need_logits: bool = True,
                keep: str | None = None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if not need_logits:  # fused kernel: softmax(q k^T * scale + reused) v, logits never materialised
            mask = None if reused_logits is None else reused_logits.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                 dropout_p=self.attn_drop.p if self.training else 0.0)
            kept = (q, k) if keep == "qk" else x if keep == "input" else None
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, D))), kept
        logits = self.logits(q, k, reused_logits)
        attn = self.attn_drop(logits.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj_drop(self.proj(out)), logits

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k of input x (B, T, D), each (B, H, T, head_dim): the q and k rows of `qkv` only."""
        B, T, D = x.shape
        bias = None if self.qkv.bias is None else self.qkv.bias[:2 * D]
        qk = F.linear(x, self.qkv.weight[:2 * D], bias)
        q, k = qk.reshape(B, T, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k

    def logits(self, q: torch.Tensor, k: torch.Tensor, reused: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-softmax logits `(q * scale) @ k^T (+ reused)`: (B, H, T, T) from (B, H, T, head_dim) q and k."""
        logits = (q * self.scale) @ k.contiguous().transpose(-2, -1)  # k^T as a view: no transposing copy
        if reused is None:
            return logits
        if isinstance(logits, torch.fx.Proxy) or reused.dtype != logits.dtype:  # FX trace; autocast: the
            return logits + reused  # reference's type promotion
        return logits.add_(reused)  # in place: the matmul's output is not needed for its backward
