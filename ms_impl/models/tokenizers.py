"""Tokenizers: T2T (soft splits + Performer or Transformer token layers) and DeiT's Conv2d patch embedding.

Soft splits use `ops.unfold`, which matches torch's `F.unfold` exactly (the old `nn.Unfold` has no
CPU kernel). The Performer's random-feature matrix `w` is a frozen Parameter: it is saved in and loaded
from checkpoints, never redrawn after construction.
"""
from __future__ import annotations

import math

import mindspore.common.dtype as mstype
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from common.config import PatchTokenizerConfig, T2TTokenizerConfig

from .attention import AttentionLogits
from .layers import Mlp, gelu_layer, layer_norm, linear
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
    """

    def __init__(self, num_features: int, epsilon: float = 1e-8):
        super().__init__()
        self.m = num_features
        self.epsilon = epsilon

    def random_features(self, z, w):
        """(B, T, emb) -> (B, T, m)."""
        return ops.exp(ops.matmul(z, w.swapaxes(0, 1)) - (z * z).sum(axis=-1, keepdims=True) / 2) / math.sqrt(self.m)

    def construct(self, q, k, v, w):
        w = w.astype(mstype.float32)
        qp = self.random_features(q.astype(mstype.float32), w)
        kp = self.random_features(k.astype(mstype.float32), w)
        normaliser = ops.matmul(qp, kp.sum(axis=1).expand_dims(-1))  # (B, T, 1)
        kptv = ops.matmul(v.astype(mstype.float32).swapaxes(1, 2), kp)  # (B, emb, m)
        return ops.matmul(qp, kptv.swapaxes(1, 2)) / (normaliser + self.epsilon)


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
        b, t, _ = x.shape
        qkv = ops.permute(self.qkv(x).reshape(b, t, 3, 1, self.emb), (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]
        _, attn = self.attn_logits(q, k)
        y = self.proj(ops.matmul(attn.astype(v.dtype), v).swapaxes(1, 2).reshape(b, t, self.emb))
        return v.squeeze(1) + y


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


class T2TTokenizer(nn.Cell):
    """Tokens-to-token: (B, C, H, W) -> (B, grid*grid, dim). Token layers are `attention1..n`."""

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

    def token_layers(self) -> list:
        return [getattr(self, name) for name in self.layer_names]

    def soft_split(self, x, index: int):
        kernel, stride, padding = self.splits[index]
        return ops.unfold(x, kernel_size=kernel, dilation=1, padding=padding, stride=stride).swapaxes(1, 2)

    def construct(self, x):
        x = self.soft_split(x, 0)
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            b, _, c = x.shape
            grid = self.layer_grids[i]
            x = self.soft_split(x.swapaxes(1, 2).reshape(b, c, grid, grid), i + 1)
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
