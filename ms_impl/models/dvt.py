"""The DVT cascade: K exits on the same image, each reusing the one before (DESIGN.md §1).

    model = DVT(common.get_config("dvt_t2t_vit_12"))     # or ms_impl.create_model (MindCV's arguments)
    logits = model(x)                                    # tuple of K (B, num_classes), train and eval
    outs = model.forward_exits(x, num_exits=2)           # list of ExitOutput, for parity/FLOPs
    res = model.forward_adaptive(x, thresholds)          # early exit: AdaptiveResult (adaptive.py)

Runs in PYNATIVE and GRAPH mode (`mindspore.set_context(mode=GRAPH_MODE)` or `mindspore.jit`) with
any batch size. Parameter names equal `common.naming.name_map(cfg, 'mindspore')`: the torch names
with LayerNorm weight/bias -> gamma/beta.

The model API of `torch_impl.models.dvt.DVT` (timm's conventions, designed for a cascade; read its
docstring), with the same names: a single-exit model returns one tensor, a cascade the tuple of per-exit
logits; `forward_features` / `forward_head(pre_logits)`, `num_features`, `head_hidden_size`,
`get_classifier`, `reset_classifier(num_classes, global_pool=None)` on every exit's head, `num_classes=0`
identity heads, `feature_info` and `forward_intermediates(..., exit_index=-1)` over the last exit's
blocks, `group_matcher` and `no_weight_decay` (the same regexes and names). Differences, all MindSpore's:
`set_grad_checkpointing()` marks every block of every exit with `Cell.recompute()` (PYNATIVE and GRAPH
mode; MindSpore cannot undo it, so `enable=False` after enabling raises); the frozen tensors stay frozen
Parameters (MindSpore checkpoints hold Parameters only). `forward_intermediates`, `forward_exits` and
`forward_adaptive` are Python-side (PYNATIVE) entry points.
"""
from __future__ import annotations

from mindspore import nn

from common.config import DVTConfig
from common.features import exit_position, take_indices

from .adaptive import AdaptiveResult, adaptive_forward
from .exit import ViTExit, check_image


class DVT(nn.Cell):
    """Cascade of `ViTExit`s built from one `DVTConfig` (`self.config`); `global_pool` sets every exit's pooling."""

    def __init__(self, cfg: DVTConfig, global_pool: str = "token"):
        super().__init__()
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = cfg.dim
        self.exits = nn.CellList([ViTExit(cfg, k, global_pool) for k in range(cfg.num_exits)])
        last = cfg.num_exits - 1
        self.feature_info = [dict(info, module=f"exits.{last}.{info['module']}")
                             for info in self.exits[last].feature_info]
        self.grad_checkpointing = False

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def global_pool(self) -> str:
        return self.exits[0].global_pool

    def construct(self, x):
        """(B, C, H, W) -> tuple of per-exit logits (B, num_classes); one tensor for a single-exit model."""
        if x.shape[0] == 0:  # MindSpore's CPU LayerNorm refuses empty inputs: zero-row logits, as torch
            logits = ()
            for out in self._cascade(x, self.num_exits, False):
                logits += (out[0],)
            return logits[0] if len(self.exits) == 1 else logits
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x):
        """Per-exit tokens after each exit's final norm, (B, 1 + grid^2, D) each (one tensor for one exit)."""
        outputs = ()
        features, relations = None, None
        for exit_ in self.exits:
            t, rels, _, _, _ = exit_.forward_tokens(x, features if exit_.feature_reuse else None,
                                                    relations if exit_.relation_reuse else None)
            outputs += (exit_.norm(t),)
            features, relations = t, rels
        if len(self.exits) == 1:
            return outputs[0]
        return outputs

    def forward_head(self, features, pre_logits=False):
        """`forward_features`' output -> per-exit logits, or the pooled features with `pre_logits=True`."""
        if len(self.exits) == 1:
            return self.exits[0].forward_head(features, pre_logits)
        logits = ()
        for k, exit_ in enumerate(self.exits):
            logits += (exit_.forward_head(features[k], pre_logits),)
        return logits

    def forward_exits(self, x, num_exits: int | None = None) -> list:
        """Run exits 0..num_exits-1 and return everything each computed (the exits' own `construct`).

        A Python-side (PYNATIVE) entry point: it returns `ExitOutput`s whose reuse fields may be None,
        which a GRAPH-mode cell output cannot carry. Also works while the context is in GRAPH mode
        (the exits then run op by op).
        """
        if num_exits is None:
            num_exits = self.num_exits
        if not 1 <= num_exits <= self.num_exits:
            raise ValueError(f"num_exits must be in 1..{self.num_exits}, got {num_exits}")
        return list(self._cascade(x, num_exits, True))

    def forward_adaptive(self, x, thresholds, criterion: str | None = None, *, budget: float | None = None,
                         fast: bool = True) -> AdaptiveResult:
        """Early exit: each sample runs exits until one is confident enough (`adaptive.adaptive_forward`).

        A Python-side entry point like `forward_exits`; in GRAPH mode each exit is compiled once
        with a dynamic batch axis.
        """
        if self.num_classes == 0:
            raise ValueError("early exit needs classifier heads; this model has num_classes=0 (features only)")
        return adaptive_forward(self, x, thresholds, criterion, budget=budget, fast=fast)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              return_prefix_tokens: bool = False, exit_index: int = -1):
        """timm's `forward_intermediates` over the blocks of exit `exit_index` (default: the last), as torch_impl:
        `(final, intermediates)` or the intermediates alone; earlier exits run in full, later ones not at all."""
        k = exit_position(self.num_exits, exit_index)
        finals = []
        features, relations = None, None
        for exit_ in self.exits[:k]:
            t, rels, _, _, _ = exit_.forward_tokens(x, features if exit_.feature_reuse else None,
                                                    relations if exit_.relation_reuse else None)
            finals.append(exit_.norm(t))
            features, relations = t, rels
        exit_ = self.exits[k]
        final, intermediates = exit_.forward_intermediates(
            x, features if exit_.feature_reuse else None, relations if exit_.relation_reuse else None,
            indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            return_prefix_tokens=return_prefix_tokens)
        if intermediates_only:
            return intermediates
        finals.append(final)
        return (tuple(finals) if len(finals) > 1 else finals[0]), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True,
                                  exit_index: int = -1) -> list:
        """Keep only what `forward_intermediates(indices, exit_index=...)` needs, as torch_impl (a feature
        extractor afterwards: it no longer fits the config's checkpoints)."""
        k = exit_position(self.num_exits, exit_index)
        take, max_index = take_indices(len(self.exits[k].blocks), indices)
        self.exits = nn.CellList(list(self.exits)[:k + 1])
        self.exits[k].blocks = nn.CellList(list(self.exits[k].blocks)[:max_index + 1])
        if prune_norm:
            self.exits[k].norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    # ---- classifier -----------------------------------------------------------------------------------
    def get_classifier(self):
        """The heads of the exits, in exit order (the head itself for a single-exit model)."""
        heads = tuple(e.head for e in self.exits)
        return heads if len(heads) > 1 else heads[0]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New heads for `num_classes` on every exit (0: identity heads); the config follows."""
        for exit_ in self.exits:
            exit_.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)

    # ---- training helpers -----------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """`Cell.recompute()` on every block of every exit: its activations are recomputed in the backward
        pass instead of being stored. MindSpore offers no way back, so disabling after enabling raises."""
        if enable and not self.grad_checkpointing:
            for exit_ in self.exits:
                for block in exit_.blocks:
                    block.recompute(use_reentrant=False)  # blocks return tuples: the non-reentrant path
            self.grad_checkpointing = True
        elif not enable and self.grad_checkpointing:
            raise ValueError("MindSpore's Cell.recompute() cannot be undone: build the model again without "
                             "set_grad_checkpointing()")

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer-wise lr decay groups (timm's format): depth counted within each exit, as torch_impl."""
        return dict(
            stem=r"^exits\.\d+\.(?:cls_token|pos_embed|tokens_to_token|patch_embed|relation_reuse_conv)",
            blocks=r"^exits\.\d+\.blocks\.(\d+)" if coarse else [
                (r"^exits\.\d+\.blocks\.(\d+)", None), (r"^exits\.\d+\.norm", (99999,))],
        )

    def _cascade(self, x, num_exits: int, collect: bool):
        outputs = ()
        if x.shape[0] == 0:  # empty batch: empty outputs of the right shapes, as torch (ViTExit.empty_output)
            check_image(x, self.config.in_chans, self.config.img_size)
            for k, exit_ in enumerate(self.exits):
                if k < num_exits:
                    outputs += (exit_.empty_output(x.dtype, collect),)
            return outputs
        features, relations = None, None
        for k, exit_ in enumerate(self.exits):
            if k < num_exits:
                out = exit_(x, features if exit_.feature_reuse else None,
                            relations if exit_.relation_reuse else None, collect)
                outputs += (out,)
                features, relations = out[1], out[2]
        return outputs

    def no_weight_decay(self) -> set:
        """Trainable parameters to keep out of weight decay (cls tokens, learned position embeddings), in the
        canonical names of torch_impl."""
        trainable = {p.name for p in self.trainable_params()}
        return {f"exits.{k}.{name}" for k in range(self.num_exits) for name in ("cls_token", "pos_embed")
                if f"exits.{k}.{name}" in trainable}
