"""Transformer block with DVT's two reuse inputs (DESIGN.md §1-2).

`h = x + attn(norm1(x), reused_logits)`; with feature reuse the previous exit's final tokens go
through this block's context MLP, lose their cls token, are resampled to this exit's grid and get a
zero vector in front, then join the MLP branch: `out = h + mlp(norm2(cat[h, ctx]))`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Attention
from .layers import Mlp, drop_path_layer
from .resample import GridResample


@dataclass(frozen=True)
class ContextSpec:
    """Feature reuse into one block: context MLP widths and the grid step s -> t."""

    hidden: int
    dim: int
    src_grid: int
    dst_grid: int
    resample: str = "nearest_avgpool"  # DVTConfig.reuse_resample
    norm: bool = True  # False: the MindSpore port's discarded LayerNorm (held, frozen, skipped)


class HeldLayerNorm(nn.Module):
    """The weight and bias of a LayerNorm that is never applied (the MindSpore port's discarded context norm):
    persistent buffers under the LayerNorm's names, so checkpoints carry them and no optimizer sees them."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))


class Block(nn.Module):
    """`forward(x, prev_features=None, reused_logits=None) -> (out, logits)`.

    With `collect=True` it returns `(out, logits, context)`, where `context` is the (B, T, ctx)
    tensor concatenated into the MLP input (None without feature reuse). `need_logits=False`: the
    attention runs fused and `logits` is None, or what `keep` asks for (see `attention.py`).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, qkv_bias: bool = False,
                 scale: float | None = None, norm_eps: float = 1e-5, act_layer=nn.GELU, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, context: ContextSpec | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, scale=scale, attn_drop=attn_drop,
                              proj_drop=drop)
        self.drop_path = drop_path_layer(drop_path)
        mlp_in = dim + (context.dim if context else 0)
        self.norm2 = nn.LayerNorm(mlp_in, eps=norm_eps)
        self.mlp = Mlp(mlp_in, mlp_hidden, dim, act_layer=act_layer, drop=drop)
        self.feature_reuse_mlp = None
        self.context_resample = None
        if context is not None:
            self.feature_reuse_mlp = nn.Sequential(
                nn.LayerNorm(dim, eps=norm_eps),
                Mlp(dim, context.hidden, context.dim, act_layer=act_layer, drop=drop))
            self.context_norm = context.norm
            if not context.norm:  # its output would be thrown away: skip it; its tensors are held, not trained
                self.feature_reuse_mlp[0] = HeldLayerNorm(dim, eps=norm_eps)
            self.context_resample = GridResample(context.src_grid, context.dst_grid, context.resample)

    def forward(self, x: torch.Tensor, prev_features: torch.Tensor | None = None,
                reused_logits: torch.Tensor | None = None, collect: bool = False, need_logits: bool = True,
                keep: str | None = None):
        attn_out, logits = self.attn(self.norm1(x), reused_logits, need_logits, keep)
        h = x + self.drop_path(attn_out)
        context = None
        if prev_features is None:
            if self.feature_reuse_mlp is not None:
                raise ValueError("this block reuses features: pass the previous exit's features")
            mlp_in = h
        else:
            context = self.context(prev_features)
            mlp_in = torch.cat([h, context], dim=-1)
        out = h + self.drop_path(self.mlp(self.norm2(mlp_in)))
        return (out, logits, context) if collect else (out, logits)

    def context(self, prev_features: torch.Tensor) -> torch.Tensor:
        """Previous exit's tokens (B, 1+s*s, D) -> context (B, 1+t*t, ctx), zeros at the cls slot."""
        if self.feature_reuse_mlp is None:
            raise ValueError("this block has no feature reuse; got prev_features")
        mlp = self.feature_reuse_mlp if self.context_norm else self.feature_reuse_mlp[1]
        c = self.context_resample.tokens(mlp(prev_features)[:, 1:])
        return torch.cat([c.new_zeros(c.shape[0], 1, c.shape[2]), c], dim=1)
