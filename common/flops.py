"""Analytic FLOPs of a DVT cascade, counted the way fvcore counts the reference (DESIGN.md §4).

Convention (fvcore): one multiply-add = 1 FLOP for linear/matmul/conv/einsum; LayerNorm with affine
= 5 per element; nearest upsampling = 1 per output element and adaptive average pooling = 1 per
input element; softmax, GELU, exp, division and additions are free. Batch size 1, so the numbers
are per image. `torch_impl` checks these formulas against fvcore on the real modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import DVTConfig, ExitConfig, T2TTokenizerConfig
from .resample import resample_flops

LN = 5  # fvcore: LayerNorm with affine parameters


@dataclass
class ExitFlops:
    """FLOPs of one exit, split by where they go (all per image)."""

    tokenizer: int = 0
    blocks: int = 0
    head: int = 0  # final norm + classifier
    feature_reuse: int = 0  # context MLPs + resampling of the previous exit's features
    relation_reuse: int = 0  # 1x1-conv MLP + resampling of the previous exit's attention logits
    parts: dict = field(default_factory=dict)

    @property
    def reuse(self) -> int:
        return self.feature_reuse + self.relation_reuse

    @property
    def total(self) -> int:
        return self.tokenizer + self.blocks + self.head + self.reuse


def _performer_layer(tokens: int, d_in: int, e: int, m: int) -> int:
    f = LN * tokens * d_in  # norm1
    f += tokens * d_in * 3 * e  # kqv
    f += 2 * tokens * e * m  # random features of k and q (w . x)
    f += tokens * m  # normaliser D = q' . sum(k')
    f += tokens * e * m  # k'^T v
    f += tokens * e * m  # q' (k'^T v)
    f += tokens * e * e  # proj
    f += LN * tokens * e  # norm2
    f += 2 * tokens * e * e  # mlp
    return f


def _transformer_token_layer(tokens: int, d_in: int, e: int) -> int:
    f = LN * tokens * d_in + tokens * d_in * 3 * e  # norm1, qkv
    f += 2 * tokens * tokens * e  # q k^T and attn v (one head)
    f += tokens * e * e + LN * tokens * e + 2 * tokens * e * e  # proj, norm2, mlp (ratio 1)
    return f


def tokenizer_flops(cfg: DVTConfig, ex: ExitConfig) -> int:
    tok = ex.tokenizer
    if not isinstance(tok, T2TTokenizerConfig):  # Conv2d patch embedding; bias is free
        return ex.num_patches * cfg.dim * cfg.in_chans * tok.kernel * tok.kernel
    e, f = tok.token_dim, 0
    for tokens, d_in in zip(tok.layer_lengths(cfg.img_size), tok.layer_in_dims(cfg.in_chans)):
        if tok.token_layer == "performer":
            f += _performer_layer(tokens, d_in, e, tok.num_random_features)
        else:
            f += _transformer_token_layer(tokens, d_in, e)
    return f + ex.num_patches * tok.project_in_dim() * cfg.dim  # Unfold is free


def block_flops(cfg: DVTConfig, tokens: int, mlp_in: int) -> int:
    d = cfg.dim
    f = LN * tokens * d + tokens * d * 3 * d  # norm1, qkv
    f += 2 * tokens * tokens * d  # q k^T and attn v over all heads
    f += tokens * d * d  # proj
    f += LN * tokens * mlp_in + tokens * mlp_in * cfg.mlp_hidden + tokens * cfg.mlp_hidden * d
    return f


def exit_flops(cfg: DVTConfig, k: int) -> ExitFlops:
    ex = cfg.exits[k]
    t = ex.num_tokens
    out = ExitFlops()
    out.tokenizer = tokenizer_flops(cfg, ex)
    out.blocks = cfg.depth * block_flops(cfg, t, cfg.block_mlp_in_dim(k))
    out.head = LN * t * cfg.dim + cfg.dim * cfg.num_classes  # head sees the cls token only
    if k > 0:
        prev = cfg.exits[k - 1]
        s, g = prev.grid, ex.grid
        mode = cfg.reuse_resample
        if cfg.uses_feature_reuse(k):
            tp = prev.num_tokens
            norm = LN * tp * cfg.dim if cfg.feature_reuse_norm == "applied" else 0  # a discarded norm is not run
            mlp = norm + tp * cfg.dim * cfg.context_hidden + tp * cfg.context_hidden * cfg.context_dim
            out.feature_reuse = cfg.depth * (mlp + cfg.context_dim * resample_flops(s, g, mode))
        if cfg.uses_relation_reuse(k):
            c, tp = cfg.relation_channels, prev.num_tokens
            conv = 2 * tp * tp * c * c * cfg.relation_mlp_ratio
            # key axis: every (map, query) row of the previous exit; query axis: every new key.
            resample = c * (tp + t) * resample_flops(s, g, mode)
            out.relation_reuse = conv + resample
    return out


def cascade_flops(cfg: DVTConfig) -> list[ExitFlops]:
    return [exit_flops(cfg, k) for k in range(cfg.num_exits)]


def cumulative_flops(cfg: DVTConfig) -> list[int]:
    """FLOPs to reach each exit (exit k runs exits 0..k), per image."""
    total, out = 0, []
    for f in cascade_flops(cfg):
        total += f.total
        out.append(total)
    return out


def cumulative_gflops(cfg: DVTConfig) -> list[float]:
    return [f / 1e9 for f in cumulative_flops(cfg)]
