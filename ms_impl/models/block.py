"""Transformer block with DVT's two reuse inputs (DESIGN.md §1-2).

`h = x + attn(norm1(x), reused_logits)`; with feature reuse the previous exit's final tokens go through
this block's context MLP, lose their cls token, are resampled to this exit's grid and get a zero vector
in front, then join the MLP branch: `out = h + mlp(norm2(cat[h, ctx]))`.
"""
from __future__ import annotations

from dataclasses import dataclass

from mindspore import nn, ops

from .attention import Attention
from .layers import Mlp, drop_path_layer, gelu_layer, layer_norm
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


class Block(nn.Cell):
    """`construct(x, prev_features=None, reused_logits=None) -> (out, logits)`.

    With `collect=True` it returns `(out, logits, context)`, where `context` is the (B, T, ctx) tensor
    concatenated into the MLP input (None without feature reuse). `need_logits=False`: `logits` is None
    (see `attention.py`).
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, qkv_bias: bool = False,
                 scale: float | None = None, norm_eps: float = 1e-5, act_layer=None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, context: ContextSpec | None = None):
        super().__init__()
        act_layer = act_layer or gelu_layer("erf")
        self.norm1 = layer_norm(dim, norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, scale=scale, attn_drop=attn_drop,
                              proj_drop=drop)
        self.drop_path = drop_path_layer(drop_path)
        mlp_in = dim + (context.dim if context else 0)
        self.norm2 = layer_norm(mlp_in, norm_eps)
        self.mlp = Mlp(mlp_in, mlp_hidden, dim, act_layer=act_layer, drop=drop)
        self.feature_reuse = context is not None
        self.context_dim = context.dim if context is not None else 0
        if context is not None:
            self.feature_reuse_mlp = nn.SequentialCell(
                layer_norm(dim, norm_eps), Mlp(dim, context.hidden, context.dim, act_layer=act_layer, drop=drop))
            self.context_norm = context.norm
            if not context.norm:  # its output would be thrown away: skip it, and give it no gradient to miss
                for param in self.feature_reuse_mlp[0].get_parameters():
                    param.requires_grad = False
            self.context_resample = GridResample(context.src_grid, context.dst_grid, context.resample)

    def construct(self, x, prev_features=None, reused_logits=None, collect=False, need_logits=True):
        attn_out, logits = self.attn(self.norm1(x), reused_logits, need_logits)
        h = x + self.drop_path(attn_out)
        context = None
        if prev_features is None:
            if self.feature_reuse:
                raise ValueError("this block reuses features: pass the previous exit's features")
            mlp_in = h
        else:
            context = self.context(prev_features).astype(h.dtype)
            mlp_in = ops.cat((h, context), axis=-1)
        out = h + self.drop_path(self.mlp(self.norm2(mlp_in)))
        if collect:
            return out, logits, context
        return out, logits

    def context(self, prev_features):
        """Previous exit's tokens (B, 1+s*s, D) -> context (B, 1+t*t, ctx), zeros at the cls slot."""
        if not self.feature_reuse:
            raise ValueError("this block has no feature reuse; got prev_features")
        if self.context_norm:
            c = self.feature_reuse_mlp(prev_features)
        else:
            c = self.feature_reuse_mlp[1](prev_features)
        c = self.context_resample.tokens(c[:, 1:])
        return ops.cat((ops.zeros_like(c[:, :1]), c), axis=1)
