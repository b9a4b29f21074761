"""One exit of the cascade: a ViT (T2T or DeiT tokenizer) that can reuse the previous exit.

`ViTExit.construct(x, prev_features=None, prev_relations=None) -> (logits, features, relations)`:
features are the final tokens before the norm (B, T, D), relations the per-block attention logits
(B, H, T, T) including any reused part. Nothing depends on the batch size, so the adaptive path can
call an exit on the still-active samples only (with the matching rows of prev_features/relations).
`need_relations=False` (no later exit reuses them): relations None (see `attention.py`).
`fast=True` (adaptive inference): the reused relations are computed with larger kernels
(`reuse_relations`); outputs equal the default path within fp32 rounding. The defaults are the
reference computation that parity and FLOPs counting use.

The classifier side mirrors torch_impl (timm's ViT conventions): `forward_head(tokens_after_norm,
pre_logits)` pools (`global_pool`: 'token', 'avg', 'max', 'avgmax' or '') and applies `head` (an Identity
when `num_classes == 0`); `forward_intermediates` returns the tokens after chosen blocks. The frozen
sinusoid `pos_embed` stays a frozen Parameter here: MindSpore's `save_checkpoint` stores Parameters only
(a registered buffer would be missing from every .ckpt).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import mindspore.common.dtype as mstype
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from common.adaptive import relation_resample_matrix
from common.config import DVTConfig, T2TTokenizerConfig
from common.features import check_pool, reduction, take_indices
from common.pos_embed import sinusoid_table

from .block import Block, ContextSpec
from .layers import dropout, gelu_layer, global_pool_nlc, layer_norm, linear, matmul_nt
from .resample import GridResample
from .tokenizers import PatchEmbed, T2TTokenizer


class ExitOutput(NamedTuple):
    """Everything one exit computed (the parity suite compares these across frameworks)."""

    logits: Tensor  # (B, num_classes)
    features: Tensor  # (B, T, D), final tokens before the norm
    relations: tuple  # L x (B, H, T, T) attention logits, reused part included
    reused_context: Optional[tuple]  # L x (B, T, ctx) concatenated into each block's MLP input
    reused_relations: Optional[tuple]  # L x (B, H, T, T) maps added to each block's logits


def amp_input_dtype(cell, dtype):
    """The dtype a cell's inputs may arrive in besides its parameters' `dtype`: the low precision of a `to_float`
    flag (`ms_impl.amp` 'O2'), which GRAPH mode applies to the cell's inputs; `dtype` itself without a flag."""
    if getattr(cell, "fp16", False):
        return mstype.float16
    if getattr(cell, "bf16", False):
        return mstype.bfloat16
    return dtype


def check_image(x, in_chans: int, img_size: int, dtype=mstype.float32, amp_dtype=None) -> None:
    """ValueError naming the expected shape unless x is (B, in_chans, img_size, img_size); TypeError naming the
    expected dtype (the parameters' dtype: float32, also under `ms_impl.amp`) for any other dtype (`amp_dtype`,
    see `amp_input_dtype`, is accepted too).

    Shapes and dtypes are static at GRAPH-mode compile time, so there the error is raised while compiling."""
    shape = x.shape
    if len(shape) != 4 or shape[1] != in_chans or shape[2] != img_size or shape[3] != img_size:
        raise ValueError(f"expected input of shape (B, {in_chans}, {img_size}, {img_size}), got {tuple(shape)}")
    if x.dtype != dtype and x.dtype != amp_dtype:
        raise TypeError(f"expected a {str(dtype).lower()} image batch (the dtype of the model's parameters), got "
                        f"{str(x.dtype).lower()}: normalise images to floats and cast them with "
                        f"x.astype(mindspore.{str(dtype).lower()})")


def _matrix(conv_weight, dtype):
    """A 1x1 convolution's weight (out, in, 1, 1) as an (out, in) matrix."""
    return conv_weight.reshape(conv_weight.shape[0], conv_weight.shape[1]).astype(dtype)


def _conv1x1(conv, x):
    """A 1x1 convolution of (B, C_in, P) pixels as W @ x + b, broadcasts explicit (no Transpose)."""
    y = ops.matmul(_matrix(conv.weight, x.dtype), x)  # (C_out, C_in) @ (B, C_in, P)
    return y + ops.broadcast_to(conv.bias.astype(x.dtype).reshape(-1, 1), y.shape)


def _trunc_normal(shape) -> Tensor:
    return initializer(TruncatedNormal(sigma=0.02), shape, mstype.float32)


class ViTExit(nn.Cell):
    """Exit `index` of `cfg`. Exits k >= 1 reuse exit k-1 as the config says (DESIGN.md §1-2)."""

    def __init__(self, cfg: DVTConfig, index: int, global_pool: str = "token"):
        super().__init__()
        ex, d = cfg.exits[index], cfg.dim
        self.index, self.grid = index, ex.grid
        self.in_chans, self.img_size = cfg.in_chans, cfg.img_size
        self.num_heads = cfg.num_heads
        self.embed_dim = d
        self.feature_reuse = cfg.uses_feature_reuse(index)
        self.relation_reuse = cfg.uses_relation_reuse(index)
        prev_grid = cfg.exits[index - 1].grid if index > 0 else None
        act = gelu_layer(cfg.gelu)

        self.cls_token = Parameter(_trunc_normal((1, 1, d)), name="cls_token")
        if cfg.pos_embed == "sinusoid":  # fixed table, frozen but saved (reference behaviour)
            self.pos_embed = Parameter(Tensor(sinusoid_table(ex.num_tokens, d)), name="pos_embed",
                                       requires_grad=False)
        else:
            self.pos_embed = Parameter(_trunc_normal((1, ex.num_tokens, d)), name="pos_embed")
        if isinstance(ex.tokenizer, T2TTokenizerConfig):
            self.tokens_to_token = T2TTokenizer(ex.tokenizer, cfg.in_chans, d, cfg.img_size, act)
            self.tokenizer_name = "tokens_to_token"
        else:
            self.patch_embed = PatchEmbed(ex.tokenizer, cfg.in_chans, d)
            self.tokenizer_name = "patch_embed"
        self.pos_drop = dropout(cfg.drop_rate)

        self.detach_reused_features = cfg.detach_reused_features
        context = (ContextSpec(cfg.context_hidden, cfg.context_dim, prev_grid, ex.grid, cfg.reuse_resample,
                               cfg.feature_reuse_norm == "applied") if self.feature_reuse else None)
        self.blocks = nn.CellList([
            Block(d, cfg.num_heads, cfg.mlp_hidden, qkv_bias=cfg.qkv_bias, scale=cfg.scale,
                  norm_eps=cfg.norm_eps, act_layer=act, drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate,
                  drop_path=rate, context=context)
            for rate in cfg.drop_path_rates()])
        self.norm = layer_norm(d, cfg.norm_eps)
        if self.relation_reuse:
            c = cfg.relation_channels
            hidden = c * cfg.relation_mlp_ratio
            self.relation_reuse_conv = nn.SequentialCell(
                nn.Conv2d(c, hidden, 1, pad_mode="pad", padding=0, has_bias=True), act(),
                nn.Conv2d(hidden, c, 1, pad_mode="pad", padding=0, has_bias=True))
            self.relation_resample = GridResample(prev_grid, ex.grid, cfg.reuse_resample)
            self.relation_matrix = Tensor(relation_resample_matrix(prev_grid, ex.grid, cfg.reuse_resample))  # fast path
        check_pool(global_pool)
        self.global_pool = global_pool
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = d
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=d, reduction=reduction(cfg.img_size, ex.grid))
                             for i in range(cfg.depth)]
        self.head = linear(d, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    def tokenize(self, x):
        """(B, C, H, W) -> patch tokens (B, grid*grid, D)."""
        return getattr(self, self.tokenizer_name)(x)

    def reuse_relations(self, prev_relations, fast=False) -> tuple:
        """L x (B, H, Tp, Tp) logits of exit k-1 -> L x (B, H, T, T) maps to add, block by block.

        `fast=True`: the same maps from fewer, larger kernels: the 1x1 convolutions as matmuls over
        the pixels, and the resampling of both axes as `M @ R @ M^T` with the dense `relation_matrix` M
        (cls carried, A kron A on patches). No Transpose kernel on the maps (`layers.py`).
        """
        if not fast:
            r = self.relation_reuse_conv(ops.cat(prev_relations, axis=1))  # layer-major channels
            return ops.split(self.relation_resample.relations(r), self.num_heads, axis=1)
        conv1, act, conv2 = self.relation_reuse_conv[0], self.relation_reuse_conv[1], self.relation_reuse_conv[2]
        x = ops.cat(prev_relations, axis=1)  # (B, HL, Tp, Tp) layer-major
        b, c, tp, _ = x.shape
        x = x.reshape(b, c, tp * tp)
        x = act(_conv1x1(conv1, x))
        x = _conv1x1(conv2, x)  # (B, HL, Tp*Tp)
        m = self.relation_matrix.astype(x.dtype)  # (T, Tp)
        t = m.shape[0]
        r = matmul_nt(x.reshape(b * c * tp, tp), m).reshape(b * c, tp, t)  # key axis
        r = ops.matmul(m, r)  # query axis: (B*HL, T, T); m not broadcast by hand (resample.py)
        return ops.split(r.reshape(b, c, t, t), self.num_heads, axis=1)

    def forward_tokens(self, x, prev_features=None, prev_relations=None, collect=False, need_relations=True,
                       fast=False, take=(), last_block=-1):
        """Tokenizer, cls token, position embedding and blocks 0..`last_block` (-1: all) ->
        (tokens before the final norm, relations, contexts, reused relation maps, tokens after the blocks in
        `take`). Plain tuples throughout, so `construct` can use it in GRAPH mode."""
        dtype = self.cls_token.dtype
        check_image(x, self.in_chans, self.img_size, dtype, amp_input_dtype(self, dtype))
        self._check_reuse_inputs(prev_features, prev_relations)
        if self.detach_reused_features and prev_features is not None:
            prev_features = ops.stop_gradient(prev_features)
        t = self.tokenize(x)
        cls = ops.broadcast_to(self.cls_token, (t.shape[0], 1, t.shape[2]))
        # The residual stream takes the parameters' dtype: float32 unless the whole exit runs in low precision.
        t = ops.cat((cls, t.astype(cls.dtype)), axis=1)
        t = self.pos_drop(t + ops.broadcast_to(self.pos_embed, t.shape))  # explicit broadcast: layers.py
        reused = self.reuse_relations(prev_relations, fast) if self.relation_reuse else None
        relations = ()
        contexts = ()
        taken = ()
        for i, block in enumerate(self.blocks):
            if last_block < 0 or i <= last_block:
                out = block(t, prev_features, None if reused is None else reused[i], collect, need_relations)
                t = out[0]
                if need_relations:
                    relations += (out[1],)
                if collect:
                    contexts += (out[2],)
                if i in take:
                    taken += (t,)
        return t, relations, contexts, reused, taken

    def construct(self, x, prev_features=None, prev_relations=None, collect=False, need_relations=True, fast=False):
        """-> (logits, features, relations); with `collect=True` an `ExitOutput` with the reused parts.

        `need_relations=False`: the blocks drop their attention logits and `relations` is None.
        `fast=True`: fast relation-reuse kernels (`reuse_relations`).
        """
        t, relations, contexts, reused, _ = self.forward_tokens(x, prev_features, prev_relations, collect,
                                                                need_relations, fast)
        logits = self.forward_head(self.norm(t))
        if not need_relations:
            relations = None
        if not collect:
            return logits, t, relations
        return ExitOutput(logits, t, relations, contexts if self.feature_reuse else None,
                          tuple(reused) if reused is not None else None)

    # ---- classifier and features (timm's ViT conventions, as torch_impl) ----------------------------
    def pool(self, x, pool_type=None):
        """Tokens (B, T, D) -> pooled (B, D) ('token': the cls token), or unchanged for ''."""
        return global_pool_nlc(x, self.global_pool if pool_type is None else pool_type)

    def forward_head(self, x, pre_logits=False):
        """Tokens after the final norm (B, T, D) -> logits (B, num_classes), or the pooled features."""
        x = self.pool(x)
        if pre_logits:
            return x
        return self.head(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: Identity), float32 with the reference init; pooling kept unless given."""
        if global_pool is not None:
            check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head.set_train(self.training)

    def forward_intermediates(self, x, prev_features=None, prev_relations=None, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              return_prefix_tokens: bool = False):
        """timm's contract over this exit's blocks: (final tokens after the norm, [intermediates]), as torch_impl.

        A Python-side (PYNATIVE) entry point. Intermediates are (B, D, grid, grid) for 'NCHW' or
        (B, grid*grid, D) for 'NLC' patch tokens; see `torch_impl.models.exit.ViTExit.forward_intermediates`.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = take_indices(len(self.blocks), indices)
        t, _, _, _, taken = self.forward_tokens(x, prev_features, prev_relations, take=tuple(take),
                                                last_block=max_index if stop_early else -1)
        intermediates = []
        for y in taken:
            y = self.norm(y) if norm else y
            patches = y[:, 1:]
            if output_fmt == "NCHW":
                patches = ops.permute(patches.reshape(patches.shape[0], self.grid, self.grid, patches.shape[-1]), (0, 3, 1, 2))
            intermediates.append((patches, y[:, :1]) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(t), intermediates

    def empty_output(self, dtype, collect=False):
        """What `construct` returns for a batch of 0 images: zero-row tensors of the right shapes.

        MindSpore's CPU LayerNorm refuses empty inputs, so an empty batch never reaches the kernels
        (torch runs them and gets the same empty tensors)."""
        t, d, h, depth = self.grid * self.grid + 1, self.embed_dim, self.num_heads, len(self.blocks)
        logits = ops.zeros((0, self.num_classes), dtype)
        features = ops.zeros((0, t, d), dtype)
        relations = ()
        for _ in range(depth):
            relations += (ops.zeros((0, h, t, t), dtype),)
        if not collect:
            return logits, features, relations
        context = tuple(ops.zeros((0, t, b.context_dim), dtype) for b in self.blocks) if self.feature_reuse else None
        return ExitOutput(logits, features, relations, context, relations if self.relation_reuse else None)

    def _check_reuse_inputs(self, prev_features, prev_relations) -> None:
        if self.feature_reuse != (prev_features is not None):
            raise ValueError(f"exit {self.index}: feature reuse is {self.feature_reuse} but prev_features "
                             f"{'was' if prev_features is not None else 'was not'} given")
        if self.relation_reuse != (prev_relations is not None):
            raise ValueError(f"exit {self.index}: relation reuse is {self.relation_reuse} but prev_relations "
                             f"{'was' if prev_relations is not None else 'was not'} given")
