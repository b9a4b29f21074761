"""Tokenizers: T2T (soft splits + Performer or Transformer token layers) and DeiT's Conv2d patch embedding.

A soft split is torch's `F.unfold` followed by `transpose(1, 2)`, and the next one starts from tokens
reshaped back to their grid. All of that only moves values (and pads zeros), so here each soft split is
one `ops.gather` with a constant index computed once in numpy (`soft_split_index`), straight from the
image or from the previous token layer's (B, L, C) output to the (B, L', C k^2) patches: bit for bit
`ops.unfold` + transposes, faster in both modes, and without the Transpose kernels that hold
per-element tables in GRAPH mode (`layers.py`). The index depends on the image size only, never on
the batch. The Performer's random-feature matrix `w` is a frozen Parameter: it is saved in and loaded
from checkpoints, never redrawn after construction.
"""
from __future__ import annotations

import math

import mindspore.common.dtype as mstype
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from common.config import PatchTokenizerConfig, T2TTokenizerConfig

from .attention import AttentionLogits
from .layers import Mlp, bmm, bmm_nt, bmm_tn, gelu_layer, layer_norm, linear, matmul_nt
from .layers import dropout as make_dropout

TOKEN_LAYER_NORM_EPS = 1e-5  # token layers use nn.LayerNorm defaults in the reference


def orthogonal_features(m: int, e: int) -> np.ndarray:
    """(m, e) random orthogonal rows times sqrt(m) (torch's orthogonal_ recipe, numpy RNG).

    Uses numpy's global RNG, which `mindspore.set_seed` also seeds.
    """
    flat = np.random.standard_normal((m, e))
    if m < e:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))[None, :]
    if m < e:
        q = q.T
    return (q * math.sqrt(m)).astype(np.float32)


class RandomFeatureAttention(nn.Cell):
    """The Performer's linear attention as a parameterless float32 island (kept fp32 under every AMP level).

    phi(z) = exp(z @ w^T - |z|^2 / 2) / sqrt(m); y = phi(q) (phi(k)^T v) / (phi(q) sum_t phi(k) + eps).
    Transposes are matmul flags, broadcasts explicit, and the two divisions multiply by a reciprocal
    (within one fp32 ulp of dividing; `layers.py` says why).
    """

    def __init__(self, num_features: int, epsilon: float = 1e-8):
        super().__init__()
        self.m = num_features
        self.epsilon = epsilon
        self.inv_sqrt_m = 1.0 / math.sqrt(num_features)

    def random_features(self, z, w):
        """(B, T, emb) -> (B, T, m)."""
        wz = matmul_nt(z.reshape(-1, z.shape[-1]), w).reshape(z.shape[:-1] + (self.m,))
        half_sq = (z * z).sum(axis=-1, keepdims=True) * 0.5
        return ops.exp(wz - ops.broadcast_to(half_sq, wz.shape)) * self.inv_sqrt_m

    def construct(self, q, k, v, w):
        w = w.astype(mstype.float32)
        qp = self.random_features(q.astype(mstype.float32), w)
        kp = self.random_features(k.astype(mstype.float32), w)
        normaliser = bmm(qp, kp.sum(axis=1).expand_dims(-1))  # (B, T, 1)
        kptv = bmm_tn(v.astype(mstype.float32), kp)  # (B, emb, m)
        y = bmm_nt(qp, kptv)  # (B, T, emb)
        return y * ops.broadcast_to(ops.reciprocal(normaliser + self.epsilon), y.shape)


class TokenPerformer(nn.Cell):
    """One-head Performer token layer with m positive random features from a frozen `w`.

    `w` (m, emb) is a saved, frozen parameter: checkpoints carry it and it is never redrawn. The
    random-feature attention runs in float32, also under mixed precision.
    """

    def __init__(self, dim: int, emb: int, num_features: int, dropout: float = 0.1, act_layer=None):
        super().__init__()
        act_layer = act_layer or gelu_layer("erf")
        self.emb, self.m = emb, num_features
        self.w = Parameter(Tensor(orthogonal_features(num_features, emb)), name="w", requires_grad=False)
        self.kqv = linear(dim, 3 * emb)
        self.dp = make_dropout(dropout)
        self.proj = linear(emb, emb)
        self.norm1 = layer_norm(dim, TOKEN_LAYER_NORM_EPS)
        self.norm2 = layer_norm(emb, TOKEN_LAYER_NORM_EPS)
        self.mlp = nn.SequentialCell(linear(emb, emb), act_layer(), linear(emb, emb), make_dropout(dropout))
        self.random_feature_attn = RandomFeatureAttention(num_features)

    def linear_attention(self, q, k, v):
        return self.random_feature_attn(q, k, v, self.w).astype(v.dtype)

    def construct(self, x):
        k, q, v = ops.split(self.kqv(self.norm1(x)), self.emb, axis=-1)  # reference order: k, q, v
        y = v + self.dp(self.proj(self.linear_attention(q, k, v)))
        return y + self.mlp(self.norm2(y))


class TokenAttention(nn.Cell):
    """One-head attention from width `dim` to `emb`; skip connection from v (reference quirk: the scale
    is `dim ** -0.5`, the input width)."""

    def __init__(self, dim: int, emb: int):
        super().__init__()
        self.emb = emb
        self.scale = dim ** -0.5
        self.qkv = linear(dim, 3 * emb, bias=False)
        self.attn_logits = AttentionLogits(self.scale)
        self.proj = linear(emb, emb)

    def construct(self, x):
        q, k, v = ops.split(self.qkv(x), self.emb, axis=-1)  # one head: (B, T, emb) each, no permute needed
        _, attn = self.attn_logits(q, k)
        y = self.proj(bmm(attn.astype(v.dtype), v))
        return v + y


class TokenTransformer(nn.Cell):
    """One-head Transformer token layer (mlp ratio 1, no dropout), as T2T-ViT's `t2t_vit_t_*`."""

    def __init__(self, dim: int, emb: int, act_layer=None):
        super().__init__()
        self.norm1 = layer_norm(dim, TOKEN_LAYER_NORM_EPS)
        self.attn = TokenAttention(dim, emb)
        self.norm2 = layer_norm(emb, TOKEN_LAYER_NORM_EPS)
        self.mlp = Mlp(emb, emb, emb, act_layer=act_layer)

    def construct(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def soft_split_index(channels: int, grid: int, kernel: int, stride: int, padding: int,
                     channels_last: bool) -> np.ndarray:
    """int32 index (L' * C * k^2,) such that `gather(cat[flat, 0], index)` is torch's
    `F.unfold(x, k, stride=s, padding=p).transpose(1, 2)` of a (C, grid, grid) map, flattened.

    `flat` is one sample flattened: the map itself (C, grid, grid) or, `channels_last`, the row-major
    tokens (grid * grid, C) that the reference reshapes to that map first. Padding reads the appended 0.
    Patch columns are ordered (c, ki, kj), patches row-major over the output grid, as F.unfold does.
    """
    out = (grid + 2 * padding - kernel) // stride + 1
    start = np.arange(out) * stride - padding  # first input row (column) of each output row (column)
    pos = start[:, None] + np.arange(kernel)[None, :]  # (out, k) input rows (columns)
    inside = (pos >= 0) & (pos < grid)
    y = pos[:, None, None, :, None]  # axes: out_y, out_x, c, ki, kj
    x = pos[None, :, None, None, :]
    c = np.arange(channels)[None, None, :, None, None]
    flat = (y * grid + x) * channels + c if channels_last else (c * grid + y) * grid + x
    valid = inside[:, None, None, :, None] & inside[None, :, None, None, :]
    index = np.where(valid, flat, channels * grid * grid)  # padding -> the appended zero
    return np.broadcast_to(index, (out, out, channels, kernel, kernel)).reshape(-1).astype(np.int32)


class T2TTokenizer(nn.Cell):
    """Tokens-to-token: (B, C, H, W) -> (B, grid*grid, dim). Token layers are `attention1..n`.

    Soft split i is one gather with the constant `split_index{i}` (module docstring)."""

    def __init__(self, cfg: T2TTokenizerConfig, in_chans: int, dim: int, img_size: int, act_layer=None):
        super().__init__()
        self.splits = tuple((s.kernel, s.stride, s.padding) for s in cfg.splits)  # plain tuples for GRAPH mode
        self.layer_grids = tuple(math.isqrt(n) for n in cfg.layer_lengths(img_size))
        for i, d_in in enumerate(cfg.layer_in_dims(in_chans), start=1):
            if cfg.token_layer == "performer":
                layer = TokenPerformer(d_in, cfg.token_dim, cfg.num_random_features, cfg.dropout, act_layer)
            else:
                layer = TokenTransformer(d_in, cfg.token_dim, act_layer)
            setattr(self, f"attention{i}", layer)
        self.layer_names = tuple(f"attention{i}" for i in range(1, len(self.splits)))
        self.project = linear(cfg.project_in_dim(), dim)
        grids = (img_size,) + self.layer_grids
        chans = (in_chans,) + (cfg.token_dim,) * len(self.layer_grids)
        self.split_widths = tuple(c * k * k for c, (k, _, _) in zip(chans, self.splits))
        self.split_lengths = tuple((g + 2 * p - k) // s + 1 for (k, s, p), g in zip(self.splits, grids))
        self.split_lengths = tuple(n * n for n in self.split_lengths)
        self.split_index_names = tuple(f"split_index{i}" for i in range(len(self.splits)))
        for i, ((k, stride, pad), grid, c) in enumerate(zip(self.splits, grids, chans)):
            # constants, not Parameters: nothing to train or save; batch-independent
            index = soft_split_index(c, grid, k, stride, pad, channels_last=i > 0)
            setattr(self, self.split_index_names[i], Tensor(index))

    def token_layers(self) -> list:
        return [getattr(self, name) for name in self.layer_names]

    def soft_split(self, x, index: int):
        """Split `index` of an image (B, C, H, W) (index 0) or of tokens (B, L, C) -> patches (B, L', C k^2)."""
        b = x.shape[0]
        flat = x.reshape(b, -1)
        flat = ops.cat((flat, ops.zeros_like(flat[:, :1])), axis=1)  # the padding value
        patches = ops.gather(flat, getattr(self, self.split_index_names[index]), 1)
        return patches.reshape(b, self.split_lengths[index], self.split_widths[index])

    def construct(self, x):
        x = self.soft_split(x, 0)
        for i, name in enumerate(self.layer_names):
            x = self.soft_split(getattr(self, name)(x), i + 1)
        return self.project(x)


class PatchEmbed(nn.Cell):
    """DeiT patch embedding: Conv2d(kernel, stride, explicit padding, bias) -> flatten -> (B, grid*grid, dim)."""

    def __init__(self, cfg: PatchTokenizerConfig, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, cfg.kernel, stride=cfg.stride, pad_mode="pad", padding=cfg.padding,
                              has_bias=True)

    def construct(self, x):
        x = self.proj(x)
        b, c, h, w = x.shape
        return x.reshape(b, c, h * w).swapaxes(1, 2)
