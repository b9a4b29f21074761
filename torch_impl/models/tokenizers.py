"""Image -> token tokenizers: T2T (soft splits + token layers) and the DeiT patch embedding.

T2T: `unfold(splits[0])`, then for each token layer: layer -> reshape to its grid (row-major) ->
`unfold(next split)`, and a final Linear `project`. Token layers are either Performers (the DVT
reference) or one-head Transformers (T2T-ViT's `t2t_vit_t_*`). Everything is explicit matmuls so
fvcore counts it; the soft splits (the reference's `nn.Unfold`) are data movement, free in the count
(DESIGN.md §4).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.config import PatchTokenizerConfig, T2TTokenizerConfig

from timm.layers import register_notrace_module

from .layers import Mlp, compute_dtype, full_precision

TOKEN_LAYER_NORM_EPS = 1e-5  # token layers use nn.LayerNorm defaults in the reference


@register_notrace_module  # FX: a leaf (its autocast guard asks the device, which tracing cannot answer)
class RandomFeatureAttention(nn.Module):
    """The Performer's linear attention, parameterless; runs in at least fp32, also under autocast.

    phi(z) = exp(z @ w^T - |z|^2 / 2) / sqrt(m); y = phi(q) (phi(k)^T v) / (phi(q) sum_t phi(k) + eps).
    """

    def __init__(self, num_features: int, epsilon: float = 1e-8):
        super().__init__()
        self.m = num_features
        self.epsilon = epsilon

    def random_features(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(B, T, emb) -> (B, T, m)."""
        w = w.to(z.dtype)
        return torch.exp(z @ w.transpose(0, 1) - (z * z).sum(dim=-1, keepdim=True) / 2) / math.sqrt(self.m)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(v)
        with full_precision(v):
            qp, kp = self.random_features(q.to(dtype), w), self.random_features(k.to(dtype), w)
            normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, 1)
            kptv = v.to(dtype).transpose(1, 2) @ kp  # (B, emb, m)
            y = (qp @ kptv.transpose(1, 2)) / (normaliser + self.epsilon)
        return y.to(v.dtype)


class TokenPerformer(nn.Module):
    """One-head Performer token layer with m positive random features from a frozen `w`.

    `w` (m, emb) is a persistent buffer: checkpoints carry it (same name as the reference's frozen
    parameter), it is never redrawn and never trained. The random-feature attention runs in at least fp32.
    """

    def __init__(self, dim: int, emb: int, num_features: int, dropout: float = 0.1, act_layer=nn.GELU):
        super().__init__()
        self.emb, self.m = emb, num_features
        self.epsilon = 1e-8
        self.kqv = nn.Linear(dim, 3 * emb)
        self.dp = nn.Dropout(dropout)
        self.proj = nn.Linear(emb, emb)
        self.norm1 = nn.LayerNorm(dim, eps=TOKEN_LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(emb, eps=TOKEN_LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), act_layer(), nn.Linear(emb, emb), nn.Dropout(dropout))
        self.register_buffer("w", nn.init.orthogonal_(torch.empty(num_features, emb)) * math.sqrt(num_features))
        self.random_feature_attn = RandomFeatureAttention(num_features, self.epsilon)

    def linear_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.random_feature_attn(q, k, v, self.w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = torch.split(self.kqv(self.norm1(x)), self.emb, dim=-1)  # reference order: k, q, v
        y = v + self.dp(self.proj(self.linear_attention(q, k, v)))
        return y + self.mlp(self.norm2(y))


class TokenAttention(nn.Module):
    """One-head attention from width `dim` to `emb`; skip connection from v (reference quirk:
    the scale is `dim ** -0.5`, the input width)."""

    def __init__(self, dim: int, emb: int):
        super().__init__()
        self.emb = emb
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * emb, bias=False)
        self.proj = nn.Linear(emb, emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, 1, self.emb).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        y = self.proj((attn @ v).transpose(1, 2).reshape(B, T, self.emb))
        return v.squeeze(1) + y


class TokenTransformer(nn.Module):
    """One-head Transformer token layer (mlp ratio 1, no dropout), as T2T-ViT's `t2t_vit_t_*`."""

    def __init__(self, dim: int, emb: int, act_layer=nn.GELU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=TOKEN_LAYER_NORM_EPS)
        self.attn = TokenAttention(dim, emb)
        self.norm2 = nn.LayerNorm(emb, eps=TOKEN_LAYER_NORM_EPS)
        self.mlp = Mlp(emb, emb, emb, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _traced() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _soft_split_slices(x: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:
    """`F.unfold(x, k, stride=s, padding=p).transpose(1, 2)` as k*k strided slices stacked channel-major, for
    ONNX export. torch exports `F.unfold` as two index Gathers and two Transposes, slow in ONNX Runtime; this
    is the same copy, bit for bit, as Slices, one Concat and one Transpose. Every exit runs its T2T module
    on the full image, so it matters most at the coarse exits. Measured (exported dvt_t2t_vit_12, batch 64
    rows at exit 1, 26 at exit 2, 10 at exit 3, 2 threads, 20 interleaved rounds in one process, medians):
    exit 1 505 -> 442 ms, exit 2 403 -> 391, exit 3 318 -> 310, static t2t_vit_12 1594 -> 1504; identical
    outputs."""
    if p:
        x = F.pad(x, (p, p, p, p))
    B, C, H, W = x.shape
    oh, ow = (H - k) // s + 1, (W - k) // s + 1
    parts = [x[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s] for i in range(k) for j in range(k)]
    return torch.stack(parts, 2).reshape(B, C * k * k, oh * ow).transpose(1, 2)


class T2TTokenizer(nn.Module):
    """Tokens-to-token: (B, C, H, W) -> (B, grid*grid, dim). Token layers are `attention1..n`."""

    def __init__(self, cfg: T2TTokenizerConfig, in_chans: int, dim: int, img_size: int, act_layer=nn.GELU):
        super().__init__()
        self.splits = cfg.splits
        self.layer_grids = [math.isqrt(n) for n in cfg.layer_lengths(img_size)]
        for i, d_in in enumerate(cfg.layer_in_dims(in_chans), start=1):
            if cfg.token_layer == "performer":
                layer = TokenPerformer(d_in, cfg.token_dim, cfg.num_random_features, cfg.dropout, act_layer)
            else:
                layer = TokenTransformer(d_in, cfg.token_dim, act_layer)
            self.add_module(f"attention{i}", layer)
        self.project = nn.Linear(cfg.project_in_dim(), dim)

    def token_layers(self) -> list[nn.Module]:
        return [getattr(self, f"attention{i}") for i in range(1, len(self.splits))]

    @staticmethod
    def soft_split(x: torch.Tensor, split) -> torch.Tensor:
        """`F.unfold(x, ...).transpose(1, 2)` of an image (B, C, H, W): (B, L, C*k*k) patches, channel-major
        as unfold orders them, gathered straight into that layout from a window view (unfold then the
        transpose would copy twice, and the LayerNorm after it once more). Bit for bit the same. Traced
        for fvcore it is `F.unfold` itself; exported to ONNX (no strided windows there) it is
        `_soft_split_slices`."""
        k, s, p = split.kernel, split.stride, split.padding
        if torch.onnx.is_in_onnx_export():
            return _soft_split_slices(x, k, s, p)
        if _traced():
            return F.unfold(x, k, stride=s, padding=p).transpose(1, 2)
        if p:
            x = F.pad(x, (p, p, p, p))
        windows = x.unfold(2, k, s).unfold(3, k, s)  # (B, C, OH, OW, k, k), a view
        B, C, oh, ow = windows.shape[:4]
        return windows.permute(0, 2, 3, 1, 4, 5).reshape(B, oh * ow, C * k * k)

    @staticmethod
    def soft_split_tokens(x: torch.Tensor, grid: int, split) -> torch.Tensor:
        """`soft_split` of row-major tokens (B, grid*grid, C), read as the channels-last image they are."""
        k, s, p = split.kernel, split.stride, split.padding
        B, _, C = x.shape
        if _traced():
            return T2TTokenizer.soft_split(x.transpose(1, 2).reshape(B, C, grid, grid), split)
        x = x.reshape(B, grid, grid, C)
        if p:
            x = F.pad(x, (0, 0, p, p, p, p))
        windows = x.unfold(1, k, s).unfold(2, k, s)  # (B, OH, OW, C, k, k), a view
        return windows.reshape(B, windows.shape[1] * windows.shape[2], C * k * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.soft_split(x, self.splits[0])
        for layer, grid, split in zip(self.token_layers(), self.layer_grids, self.splits[1:]):
            x = self.soft_split_tokens(layer(x), grid, split)
        return self.project(x)


class PatchEmbed(nn.Module):
    """DeiT patch embedding: Conv2d(kernel, stride, padding) -> flatten -> (B, grid*grid, dim)."""

    def __init__(self, cfg: PatchTokenizerConfig, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, cfg.kernel, stride=cfg.stride, padding=cfg.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
