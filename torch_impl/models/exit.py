"""One exit of the cascade: a ViT (T2T or DeiT tokenizer) that can reuse the previous exit.

`ViTExit.forward(x, prev_features=None, prev_relations=None) -> (logits, features, relations)`:
features are the final tokens before the norm (B, T, D), relations the per-block attention logits
(B, H, T, T) including any reused part. Nothing depends on the batch size, so the adaptive path can
call an exit on the still-active samples only (with the matching rows of prev_features/relations).
`need_relations=False` (no later exit reuses them): fused attention in every block, relations None.
`fast=True` (adaptive inference): the reused relations are computed with larger kernels
(`reuse_relations`); outputs equal the default path within fp32 rounding. The defaults are the
reference computation that parity and FLOPs counting use.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from common.adaptive import relation_resample_matrix
from common.config import DVTConfig, T2TTokenizerConfig
from common.pos_embed import sinusoid_table

from .block import Block, ContextSpec
from .layers import gelu_layer, init_weights, trunc_normal_
from .resample import GridResample
from .tokenizers import PatchEmbed, T2TTokenizer


class ExitOutput(NamedTuple):
    """Everything one exit computed (the parity suite compares these across frameworks)."""

    logits: torch.Tensor  # (B, num_classes)
    features: torch.Tensor  # (B, T, D), final tokens before the norm
    relations: tuple  # L x (B, H, T, T) attention logits, reused part included
    reused_context: Optional[tuple]  # L x (B, T, ctx) concatenated into each block's MLP input
    reused_relations: Optional[tuple]  # L x (B, H, T, T) maps added to each block's logits


def check_image(x: torch.Tensor, in_chans: int, img_size: int, dtype: torch.dtype = torch.float32) -> None:
    """ValueError naming the expected shape unless x is (B, in_chans, img_size, img_size); TypeError naming the
    expected dtype (the parameters' dtype: float32 unless the model was cast) for any other dtype."""
    if x.dim() != 4 or tuple(x.shape[1:]) != (in_chans, img_size, img_size):
        raise ValueError(f"expected input of shape (B, {in_chans}, {img_size}, {img_size}), "
                         f"got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"expected a {str(dtype).replace('torch.', '')} image batch (the dtype of the model's "
                        f"parameters), got {str(x.dtype).replace('torch.', '')}: normalise images to floats "
                        f"(e.g. timm's transforms) and cast them with x.to({dtype}); under torch.autocast pass "
                        "float32")


class ViTExit(nn.Module):
    """Exit `index` of `cfg`. Exits k >= 1 reuse exit k-1 as the config says (DESIGN.md §1-2)."""

    def __init__(self, cfg: DVTConfig, index: int):
        super().__init__()
        ex, d = cfg.exits[index], cfg.dim
        self.index, self.grid = index, ex.grid
        self.in_chans, self.img_size = cfg.in_chans, cfg.img_size
        self.num_heads = cfg.num_heads
        self.feature_reuse = cfg.uses_feature_reuse(index)
        self.relation_reuse = cfg.uses_relation_reuse(index)
        prev_grid = cfg.exits[index - 1].grid if index > 0 else None
        act = gelu_layer(cfg.gelu)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.pos_embed == "sinusoid":
            table = torch.tensor(sinusoid_table(ex.num_tokens, d))
            self.pos_embed = nn.Parameter(table, requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, ex.num_tokens, d))
        if isinstance(ex.tokenizer, T2TTokenizerConfig):
            self.tokens_to_token = T2TTokenizer(ex.tokenizer, cfg.in_chans, d, cfg.img_size, act)
        else:
            self.patch_embed = PatchEmbed(ex.tokenizer, cfg.in_chans, d)
        self.pos_drop = nn.Dropout(cfg.drop_rate)

        self.detach_reused_features = cfg.detach_reused_features
        context = (ContextSpec(cfg.context_hidden, cfg.context_dim, prev_grid, ex.grid, cfg.reuse_resample,
                               cfg.feature_reuse_norm == "applied") if self.feature_reuse else None)
        self.blocks = nn.ModuleList([
            Block(d, cfg.num_heads, cfg.mlp_hidden, qkv_bias=cfg.qkv_bias, scale=cfg.scale,
                  norm_eps=cfg.norm_eps, act_layer=act, drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate,
                  drop_path=rate, context=context)
            for rate in cfg.drop_path_rates()])
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.relation_reuse_conv = None
        self.relation_resample = None
        if self.relation_reuse:
            c = cfg.relation_channels
            hidden = c * cfg.relation_mlp_ratio
            self.relation_reuse_conv = nn.Sequential(nn.Conv2d(c, hidden, 1), act(), nn.Conv2d(hidden, c, 1))
            self.relation_resample = GridResample(prev_grid, ex.grid, cfg.reuse_resample)
            self.register_buffer("relation_matrix",
                                 torch.tensor(relation_resample_matrix(prev_grid, ex.grid, cfg.reuse_resample)),
                                 persistent=False)  # fast path only; never in a state dict
        self.head = nn.Linear(d, cfg.num_classes)

        self.apply(init_weights)
        if not self.cls_token.is_meta:
            trunc_normal_(self.cls_token, std=0.02)
            if self.pos_embed.requires_grad:
                trunc_normal_(self.pos_embed, std=0.02)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch tokens (B, grid*grid, D)."""
        tokenizer = self.tokens_to_token if hasattr(self, "tokens_to_token") else self.patch_embed
        return tokenizer(x)

    def reuse_relations(self, prev_relations, fast: bool = False) -> tuple:
        """L x (B, H, Tp, Tp) logits of exit k-1 -> L x (B, H, T, T) maps to add, block by block.

        `fast=True`: the same maps from fewer, larger kernels: the 1x1 convolutions as matmuls over
        channels-last pixels, and the resampling of both axes as `M @ R @ M^T` with the dense
        `relation_matrix` M (cls carried, A kron A on patches). About 2x faster on CPU at 10x10 -> 14x14.
        """
        if not fast:
            r = self.relation_reuse_conv(torch.cat(list(prev_relations), dim=1))  # layer-major channels
            return self.relation_resample.relations(r).split(self.num_heads, dim=1)
        conv1, act, conv2 = self.relation_reuse_conv
        x = torch.cat([r.permute(0, 2, 3, 1) for r in prev_relations], dim=-1)  # (B, Tp, Tp, HL) layer-major
        x = F.linear(act(F.linear(x, conv1.weight.flatten(1), conv1.bias)), conv2.weight.flatten(1), conv2.bias)
        B, tp, _, c = x.shape
        m = self.relation_matrix.to(x.dtype)
        r = x.permute(0, 3, 1, 2).reshape(B * c, tp, tp) @ m.transpose(0, 1)  # key axis
        t = m.shape[0]
        return (m @ r).reshape(B, c, t, t).split(self.num_heads, dim=1)  # query axis

    def forward(self, x: torch.Tensor, prev_features: torch.Tensor | None = None,
                prev_relations=None, collect: bool = False, need_relations: bool = True, fast: bool = False):
        """-> (logits, features, relations); with `collect=True` an `ExitOutput` with the reused parts.

        `need_relations=False`: the blocks use fused attention and `relations` is None.
        `fast=True`: fast relation-reuse kernels (`reuse_relations`).
        """
        check_image(x, self.in_chans, self.img_size, self.cls_token.dtype)
        self._check_reuse_inputs(prev_features, prev_relations)
        if self.detach_reused_features and prev_features is not None:
            prev_features = prev_features.detach()
        t = self.tokenize(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.pos_drop(t + self.pos_embed)
        reused = self.reuse_relations(prev_relations, fast) if self.relation_reuse else None
        relations, contexts = [], []
        for i, block in enumerate(self.blocks):
            out = block(t, prev_features, None if reused is None else reused[i], collect=collect,
                        need_logits=need_relations)
            t = out[0]
            relations.append(out[1])
            if collect:
                contexts.append(out[2])
        logits = self.head(self.norm(t)[:, 0])
        relations = tuple(relations) if need_relations else None
        if not collect:
            return logits, t, relations
        return ExitOutput(logits, t, relations, tuple(contexts) if self.feature_reuse else None,
                          tuple(reused) if reused is not None else None)

    def _check_reuse_inputs(self, prev_features, prev_relations) -> None:
        for what, uses, given in (("features", self.feature_reuse, prev_features is not None),
                                  ("relations", self.relation_reuse, prev_relations is not None)):
            if uses != given:
                need = "needs" if uses else "does not reuse"
                raise ValueError(f"exit {self.index} {need} the previous exit's {what} "
                                 f"(got {'some' if given else 'none'})")
