"""One exit of the cascade: a ViT (T2T or DeiT tokenizer) that can reuse the previous exit.

`ViTExit.forward(x, prev_features=None, prev_relations=None) -> (logits, features, relations)`:
features are the final tokens before the norm (B, T, D), relations the per-block attention logits
(B, H, T, T) including any reused part. Nothing depends on the batch size, so the adaptive path can
call an exit on the still-active samples only (with the matching rows of prev_features/relations).
`need_relations=False` (no later exit reuses them): fused attention in every block, relations None.
`fast=True`: batched fast relation-reuse kernels (for export, compiling, CUDA; eager CPU inference has
its own, `reuse_relations`). `defer_relations="qk"` / `"input"` (adaptive inference): fused attention in
every block too, and the relations come back as a `DeferredRelations` that computes them later for the
rows that need them.
The defaults are the reference computation that parity and FLOPs counting use; the other paths equal
it within fp32 rounding.

The classifier side follows timm's ViT: `forward_head(tokens_after_norm, pre_logits)` pools
(`global_pool`: 'token' = the cls token, the reference; 'avg' / 'max' / 'avgmax' over patch tokens;
'' = no pooling) and applies `head` (an Identity when `num_classes == 0`). `forward_intermediates`
returns the tokens after chosen blocks with timm's contract (see `dvt.DVT`). With
`grad_checkpointing` every block is recomputed in the backward pass instead of keeping its activations.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from timm.layers import global_pool_nlc
from timm.models import checkpoint
from torch import nn

from common.adaptive import relation_resample_matrix
from common.config import DVTConfig, T2TTokenizerConfig
from common.features import check_pool, reduction, take_indices
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


class ExitTokens(NamedTuple):
    """The token stream of one exit (`ViTExit.forward_tokens`)."""

    tokens: torch.Tensor  # (B, T, D) after the last block run, before the final norm
    relations: list  # per block run: (B, H, T, T) attention logits (None entries with need_relations=False)
    contexts: list  # per block run with collect=True: (B, T, ctx) reused context (None without feature reuse)
    reused: Optional[tuple]  # L x (B, H, T, T) reused relation maps, or None
    taken: list  # tokens after the blocks listed in `take`, in block order


@torch.fx.wrap  # FX: one leaf call that runs on the real tensor (a shape test cannot be traced)
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


PIXEL_CHUNK = 2048  # pixels per step of the relation-reuse MLP in eager CPU inference (measured: 25% faster)


class ReusedRelations:
    """The maps an exit adds to its blocks' attention logits, resampled when a block asks for them.

    `z` (B, H*L, Tp, Tp): the relation-reuse MLP's output at the previous exit's grid; `self[l]` (or
    `block(l, rows)`) resamples group l (of rows `rows`) to this exit's grid, (n, H, T, T), with
    `GridResample.relations_into`. One block's maps at a time keep the working set L times smaller than the
    whole set, which on CPU costs as much in fresh memory (page faults, cache misses) as the arithmetic;
    the maps equal the batched computation's within fp32 rounding. Eager inference only (no autograd).
    """

    def __init__(self, z: torch.Tensor, num_heads: int, resample: GridResample):
        self.z, self.num_heads, self.resample = z, num_heads, resample

    def __len__(self) -> int:
        return self.z.shape[1] // self.num_heads

    def __getitem__(self, l: int) -> torch.Tensor:
        return self.block(l)

    def __iter__(self):
        return (self.block(l) for l in range(len(self)))

    def narrow(self, n: int) -> "ReusedRelations":
        return ReusedRelations(self.z[:n], self.num_heads, self.resample)

    def tensors(self) -> list:
        return [self.z]

    def block(self, l: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        h = self.num_heads
        z = self.z[:, l * h:(l + 1) * h]
        if rows is not None:
            z = z.index_select(0, rows)
        n, t = z.shape[0], 1 + self.resample.dst ** 2
        out = z.new_empty(n, h, t, t)
        with torch.autocast(z.device.type, enabled=False):  # out= below: z's type throughout
            self.resample.relations_into(z.reshape(n * h, *z.shape[2:]), out.view(n * h, t, t))
        return out


class _Attns(NamedTuple):
    attns: list


class DeferredRelations:
    """An exit's attention logits, not computed yet ("deferred relations" of adaptive inference).

    Only the samples that go on to the next exit need exit k's relations, and after exit k most samples
    leave. So exit k runs fused attention for all its rows, keeps each block's q and k (`kept="qk"`) or its
    attention input (`kept="input"`, q and k recomputed: less memory, more work) and the maps reused in its
    logits, and `rows(index)` computes `Attention.logits` for the rows that continue, after the decision.
    """

    def __init__(self, blocks, kept: list, reused, kept_kind: str):
        self.attns = blocks.attns if isinstance(blocks, _Attns) else [b.attn for b in blocks]
        self.kept, self.reused, self.kept_kind = kept, reused, kept_kind

    def narrow(self, n: int) -> "DeferredRelations":
        """The first n rows (a stage run padded to a larger batch, `torch_impl.cuda_graphs`)."""
        kept = [tuple(t[:n] for t in k) if self.kept_kind == "qk" else k[:n] for k in self.kept]
        reused = None if self.reused is None else (
            self.reused.narrow(n) if isinstance(self.reused, ReusedRelations) else tuple(r[:n] for r in self.reused))
        return DeferredRelations(_Attns(self.attns), kept, reused, self.kept_kind)

    def tensors(self) -> list:
        """Every tensor it holds (what a captured stage's static outputs are)."""
        kept = [t for k in self.kept for t in (k if self.kept_kind == "qk" else (k,))]
        reused = [] if self.reused is None else (
            self.reused.tensors() if isinstance(self.reused, ReusedRelations) else list(self.reused))
        return kept + reused

    def rows(self, index: torch.Tensor | None = None) -> tuple:
        """L x (n, H, T, T) relations of rows `index` (None: all rows), as the explicit path computes them."""
        out = []
        for i, (attn, kept) in enumerate(zip(self.attns, self.kept)):
            if index is not None:
                kept = tuple(t.index_select(0, index) for t in kept) if self.kept_kind == "qk" \
                    else kept.index_select(0, index)
            r = None if self.reused is None else _reused_rows(self.reused, i, index)
            q, k = kept if self.kept_kind == "qk" else attn.qk(kept)
            out.append(attn.logits(q, k, r))
        return tuple(out)


def _reused_rows(reused, l: int, rows: torch.Tensor | None) -> torch.Tensor:
    """Block l's reused maps for rows `rows` (None: all), from a `ReusedRelations` or a tuple of maps."""
    if isinstance(reused, ReusedRelations):
        return reused.block(l, rows)
    return reused[l] if rows is None else reused[l].index_select(0, rows)


class ViTExit(nn.Module):
    """Exit `index` of `cfg`. Exits k >= 1 reuse exit k-1 as the config says (DESIGN.md §1-2)."""

    def __init__(self, cfg: DVTConfig, index: int, global_pool: str = "token"):
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
        if cfg.pos_embed == "sinusoid":  # fixed table: a persistent buffer (saved, loaded, never trained)
            self.register_buffer("pos_embed", torch.tensor(sinusoid_table(ex.num_tokens, d)))
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
                                 persistent=False)  # batched fast kernels only; never in a state dict
        check_pool(global_pool)
        self.global_pool = global_pool
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = d
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=d, reduction=reduction(cfg.img_size, ex.grid))
                             for i in range(cfg.depth)]
        self.head = nn.Linear(d, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False

        self.apply(init_weights)
        if not self.cls_token.is_meta:
            trunc_normal_(self.cls_token, std=0.02)
            if isinstance(self.pos_embed, nn.Parameter):
                trunc_normal_(self.pos_embed, std=0.02)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch tokens (B, grid*grid, D)."""
        tokenizer = self.tokens_to_token if hasattr(self, "tokens_to_token") else self.patch_embed
        return tokenizer(x)

    def reuse_relations(self, prev_relations, fast: bool = False):
        """L x (B, H, Tp, Tp) logits of exit k-1 -> the L (B, H, T, T) maps to add, block by block.

        Eager CPU inference (no autograd, not tracing or compiling) returns them as a `ReusedRelations`:
        the MLP image by image, each block's maps resampled when the block asks for them
        (`_reuse_relations_by_image`); about half the time of the batched forms on CPU. Otherwise a tuple:
        by default the batched reference computation (layer-major concatenation, the two 1x1
        convolutions, `GridResample.relations`), which autograd and fvcore see; with `fast=True` the same
        maps from fewer, larger kernels that also export and compile well: the 1x1 convolutions as matmuls
        over channels-last pixels, and the resampling of both axes as `M @ R @ M^T` with the dense
        `relation_matrix` M (cls carried, A kron A on patches). All equal within fp32 rounding.
        """
        if not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or isinstance(prev_relations[0], torch.fx.Proxy) or prev_relations[0].device.type != "cpu"):
            return self._reuse_relations_by_image(prev_relations)
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

    def _reuse_relations_by_image(self, prev_relations) -> "ReusedRelations":
        """The relation-reuse MLP one image at a time: the 1x1 convolutions as two matmuls on the image's
        (H*L, Tp*Tp) maps, `PIXEL_CHUNK` pixels at a time so that the hidden layer (3x the maps) stays in
        cache (bit for bit the same columns: every pixel is computed alone); the resampling is left to
        `ReusedRelations`, one block at a time. No autograd.
        """
        conv1, act, conv2 = self.relation_reuse_conv
        first = prev_relations[0]
        autocast = torch.is_autocast_enabled(first.device.type)
        dtype = torch.get_autocast_dtype(first.device.type) if autocast else first.dtype  # what autocast would use
        w1, b1 = conv1.weight.flatten(1).to(dtype), conv1.bias.unsqueeze(1).to(dtype)
        w2, b2 = conv2.weight.flatten(1).to(dtype), conv2.bias.unsqueeze(1).to(dtype)
        batch, tp = first.shape[0], first.shape[-1]
        pixels = tp * tp
        z = first.new_empty(batch, w2.shape[0], pixels, dtype=dtype)
        with torch.autocast(first.device.type, enabled=False):  # out= below: the types are set by hand
            for b in range(batch):
                r = torch.cat([p[b] for p in prev_relations]).flatten(1).to(dtype)  # (H*L, Tp*Tp), layer-major
                for start in range(0, pixels, PIXEL_CHUNK):
                    cols = slice(start, start + PIXEL_CHUNK)
                    torch.addmm(b2, w2, act(torch.addmm(b1, w1, r[:, cols])), out=z[b, :, cols])
        return ReusedRelations(z.view(batch, w2.shape[0], tp, tp), self.num_heads, self.relation_resample)

    def forward_tokens(self, x: torch.Tensor, prev_features: torch.Tensor | None = None, prev_relations=None, *,
                       collect: bool = False, need_relations: bool = True, fast: bool = False, take=(),
                       last_block: int | None = None, defer: str | None = None) -> ExitTokens:
        """Tokenizer, cls token, position embedding and blocks 0..`last_block` (default: all).

        The tokens after every block listed in `take` are returned in `taken`. `defer` ("qk" / "input"): the
        blocks run fused attention and keep what `DeferredRelations` needs instead of returning their logits.
        """
        check_image(x, self.in_chans, self.img_size, self.cls_token.dtype)
        self._check_reuse_inputs(prev_features, prev_relations)
        if self.detach_reused_features and prev_features is not None:
            prev_features = prev_features.detach()
        t = self.tokenize(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.pos_drop(t + self.pos_embed)
        reused = self.reuse_relations(prev_relations, fast) if self.relation_reuse else None
        relations, contexts, taken = [], [], []
        blocks = self.blocks if last_block is None else self.blocks[:last_block + 1]
        for i, block in enumerate(blocks):
            args = (t, prev_features, None if reused is None else reused[i], collect, need_relations and not defer,
                    defer)
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                out = checkpoint(block, *args)  # activations recomputed in backward (non-reentrant)
            else:
                out = block(*args)
            t = out[0]
            relations.append(out[1])
            if collect:
                contexts.append(out[2])
            if i in take:
                taken.append(t)
        return ExitTokens(t, relations, contexts, reused, taken)

    def forward(self, x: torch.Tensor, prev_features: torch.Tensor | None = None,
                prev_relations=None, collect: bool = False, need_relations: bool = True, fast: bool = False,
                defer_relations: str | None = None):
        """-> (logits, features, relations); with `collect=True` an `ExitOutput` with the reused parts.

        `need_relations=False`: the blocks use fused attention and `relations` is None.
        `fast=True`: the batched fast relation-reuse kernels where eager CPU inference does not apply
        (exported and compiled stages, CUDA; `reuse_relations`).
        `defer_relations` "qk" or "input" (with `need_relations`): fused attention, and `relations` is a
        `DeferredRelations` keeping each block's q and k, or its attention input, for computing the
        relations of chosen rows later.
        """
        if defer_relations not in (None, "qk", "input"):
            raise ValueError(f"defer_relations must be None, 'qk' or 'input', got {defer_relations!r}")
        defer = defer_relations if need_relations else None
        if defer and collect:
            raise ValueError("collect=True returns the relations themselves: it cannot defer them")
        t, relations, contexts, reused, _ = self.forward_tokens(
            x, prev_features, prev_relations, collect=collect, need_relations=need_relations, fast=fast, defer=defer)
        logits = self.forward_head(self.norm(t))
        if defer:
            relations = DeferredRelations(self.blocks, relations, reused, defer)
        else:
            relations = tuple(relations) if need_relations else None
        if not collect:
            return logits, t, relations
        return ExitOutput(logits, t, relations, tuple(contexts) if self.feature_reuse else None,
                          tuple(reused) if reused is not None else None)

    # ---- classifier and features (timm's ViT conventions) ------------------------------------------
    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        """Tokens (B, T, D) -> pooled (B, D) ('token': the cls token), or unchanged for ''."""
        return global_pool_nlc(x, pool_type=self.global_pool if pool_type is None else pool_type, num_prefix_tokens=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens after the final norm (B, T, D) -> logits (B, num_classes), or the pooled features."""
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: Identity), on the exit's device and dtype; pooling kept unless given."""
        if global_pool is not None:
            check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.cls_token  # always a parameter of the exit: its device and dtype
        self.head = (nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())
        if num_classes > 0 and not ref.is_meta:
            init_weights(self.head)
        self.head.train(self.training)

    def forward_intermediates(self, x: torch.Tensor, prev_features: torch.Tensor | None = None,
                              prev_relations=None, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              return_prefix_tokens: bool = False):
        """timm's contract over this exit's blocks: (final tokens after the norm, [intermediates]).

        `indices`: None = every block, int n = the last n, a sequence = those blocks (negative from the end).
        Intermediates are the patch tokens after each chosen block, (B, D, grid, grid) for 'NCHW' or
        (B, grid*grid, D) for 'NLC', normalised by the final norm with `norm=True`; `return_prefix_tokens`
        pairs each with its cls token (B, 1, D). `stop_early` runs no block past the last chosen one.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = take_indices(len(self.blocks), indices)
        out = self.forward_tokens(x, prev_features, prev_relations, take=take,
                                  last_block=max_index if stop_early else None)
        intermediates = []
        for y in out.taken:
            y = self.norm(y) if norm else y
            patches = y[:, 1:]
            if output_fmt == "NCHW":
                grid = patches.reshape(patches.shape[0], self.grid, self.grid, patches.shape[-1])  # no -1: batch 0
                patches = grid.permute(0, 3, 1, 2).contiguous()
            intermediates.append((patches, y[:, :1]) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(out.tokens), intermediates

    def _check_reuse_inputs(self, prev_features, prev_relations) -> None:
        for what, uses, given in (("features", self.feature_reuse, prev_features is not None),
                                  ("relations", self.relation_reuse, prev_relations is not None)):
            if uses != given:
                need = "needs" if uses else "does not reuse"
                raise ValueError(f"exit {self.index} {need} the previous exit's {what} "
                                 f"(got {'some' if given else 'none'})")
