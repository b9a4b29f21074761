"""The DVT cascade: K exits on the same image, each reusing the one before (DESIGN.md §1).

    model = DVT(common.get_config("dvt_t2t_vit_12"))     # or timm.create_model / torch_impl.create_model
    logits = model(x)                                    # tuple of K (B, num_classes), train and eval
    outs = model.forward_exits(x, num_exits=2)           # list of ExitOutput, for parity/FLOPs
    res = model.forward_adaptive(x, thresholds)          # early exit: AdaptiveResult (adaptive.py)

timm's model API, designed for a cascade. A model with one exit (`t2t_vit_*`, `deit_small*`) is a plain
timm model: every method below returns what timm's ViT returns. A cascade (K > 1 exits) keeps the DVT
contract of the reference: `forward` returns the tuple of per-exit logits, in train and eval mode, and
the per-exit methods return tuples in exit order.

- `forward_features(x)`: the tokens of every exit after its final norm, (B, 1 + grid_k^2, D) each.
- `forward_head(features, pre_logits=False)`: each exit's own head on its own features: logits
  (B, num_classes), or with `pre_logits=True` the pooled features (B, D) the head would see.
- `num_classes`, `num_features` = `head_hidden_size` = `embed_dim` = D (all exits share the width),
  `in_chans`, `global_pool` ('token': the cls token, as the reference; 'avg', 'max', 'avgmax' or '').
- `get_classifier()`: the exits' heads (a tuple; the head itself for one exit);
  `reset_classifier(num_classes, global_pool=None)` replaces every exit's head. `num_classes=0` at
  creation or reset gives identity heads, so `forward` returns the pooled features of every exit.
- `forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only,
  return_prefix_tokens, exit_index=-1)`: timm's contract over the blocks of ONE exit, `exit_index`
  (default the last: the finest grid, the features a dense task wants); earlier exits run in full
  because the chosen one reuses them, later exits do not run. `feature_info` describes that last exit's
  blocks, and `features_only=True` (timm's FeatureGetterNet) extracts from it: by default the last three
  blocks as (B, D, grid, grid) maps. Each exit has its own `feature_info` (`model.exits[k]`).
  The final output is the tuple of the normed tokens of the exits that ran (one tensor for one exit).
- `set_grad_checkpointing(enable)`: every block of every exit recomputes its activations in the
  backward pass (torch.utils.checkpoint, non-reentrant) instead of storing them.
- `group_matcher(coarse)`: layer-wise lr decay counts depth within each exit, so all exits get the same
  ladder: the stem (tokenizer, cls token, position embedding, relation-reuse convs) is layer 0, block i
  of every exit (with its feature-reuse MLP) is layer i + 1, the final norms join the last block (as in
  timm's ViT) and the heads come last.
- `no_weight_decay()`: cls tokens and learned position embeddings. Frozen tensors (the sinusoid
  position table of T2T, the Performer's random features `w`) are persistent buffers: saved and loaded
  under the reference names, never handed to an optimizer.
- Tracing: torch.fx (timm's feature extraction), torch.compile and torch.export trace the default path.

`load_state_dict` accepts the canonical, reference (official DVT) and MindSpore namings as well as
checkpoint containers, because timm's `create_model(..., checkpoint_path=...)` hands it whatever
the file holds; strict loads are validated first, so a misfit never loads half-way.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from common.config import DVTConfig
from common.features import exit_position, take_indices

from ..checkpoint import canonical_state_dict, validate
from .adaptive import AdaptiveResult, adaptive_forward
from .exit import ExitOutput, ViTExit


class DVT(nn.Module):
    """Cascade of `ViTExit`s built from one `DVTConfig` (`self.config`).

    `global_pool` sets every exit's pooling; `device` / `dtype` place the model at construction (timm's
    factory arguments; `device="meta"` builds it without memory).
    """

    def __init__(self, cfg: DVTConfig, *, global_pool: str = "token", device=None, dtype=None):
        super().__init__()
        self.config = cfg
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.exits = nn.ModuleList([ViTExit(cfg, k, global_pool) for k in range(cfg.num_exits)])
        if dtype is not None:
            self.to(dtype)
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = cfg.dim
        last = len(self.exits) - 1
        self.feature_info = [dict(info, module=f"exits.{last}.{info['module']}")
                             for info in self.exits[last].feature_info]

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def global_pool(self) -> str:
        return self.exits[0].global_pool

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        """(B, C, H, W) -> tuple of per-exit logits (B, num_classes); one tensor for a single-exit model."""
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor):
        """Per-exit tokens after each exit's final norm, (B, 1 + grid^2, D) each (one tensor for one exit)."""
        outputs, features, relations = [], None, None
        for exit_ in self.exits:
            out = exit_.forward_tokens(x, features if exit_.feature_reuse else None,
                                       relations if exit_.relation_reuse else None)
            outputs.append(exit_.norm(out.tokens))
            features, relations = out.tokens, tuple(out.relations)
        return self._per_exit(outputs)

    def forward_head(self, features, pre_logits: bool = False):
        """`forward_features`' output -> per-exit logits, or the pooled features with `pre_logits=True`."""
        features = features if isinstance(features, (tuple, list)) else (features,)
        if len(features) != self.num_exits:
            raise ValueError(f"forward_head takes the features of all {self.num_exits} exits, got {len(features)}")
        return self._per_exit([e.forward_head(f, pre_logits) for e, f in zip(self.exits, features)])

    def forward_exits(self, x: torch.Tensor, num_exits: int | None = None) -> list[ExitOutput]:
        """Run exits 0..num_exits-1 and return everything each computed (`ExitOutput`: logits, features
        before the norm, attention logits, reused context and relations), for parity and FLOPs tools."""
        if num_exits is None:
            num_exits = self.num_exits
        if not 1 <= num_exits <= self.num_exits:
            raise ValueError(f"num_exits must be in 1..{self.num_exits}, got {num_exits}")
        outputs, features, relations = [], None, None
        for exit_ in self.exits[:num_exits]:
            out = exit_(x, features if exit_.feature_reuse else None,
                        relations if exit_.relation_reuse else None, collect=True)
            outputs.append(out)
            features, relations = out.features, out.relations
        return outputs

    def forward_adaptive(self, x: torch.Tensor, thresholds, criterion: str | None = None, *,
                         budget: float | None = None, fast: bool = True,
                         relations: str = "deferred", compile: bool | dict = False,
                         graphs=None) -> AdaptiveResult:
        """Early exit: each sample runs exits until one is confident enough (`adaptive.adaptive_forward`)."""
        if self.num_classes == 0:
            raise ValueError("early exit needs classifier heads; this model has num_classes=0 (features only)")
        return adaptive_forward(self, x, thresholds, criterion, budget=budget, fast=fast, relations=relations,
                                compile=compile, graphs=graphs)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              return_prefix_tokens: bool = False, exit_index: int = -1):
        """timm's `forward_intermediates` over the blocks of exit `exit_index` (default: the last).

        Returns `(final, intermediates)`, or the list of intermediates with `intermediates_only=True`:
        `final` is the tuple of the normed tokens of exits 0..exit_index (one tensor for a single-exit
        model; with `stop_early` the chosen exit's entry stops at its last chosen block), `intermediates`
        the chosen blocks' patch tokens of that exit (see `ViTExit.forward_intermediates`).
        """
        k = exit_position(self.num_exits, exit_index)
        finals, features, relations = [], None, None
        for exit_ in self.exits[:k]:  # earlier exits run in full: exit k reuses them
            out = exit_.forward_tokens(x, features if exit_.feature_reuse else None,
                                       relations if exit_.relation_reuse else None)
            finals.append(exit_.norm(out.tokens))
            features, relations = out.tokens, tuple(out.relations)
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
                                  exit_index: int = -1) -> list[int]:
        """Keep only what `forward_intermediates(indices, exit_index=...)` needs (timm's FeatureGetterNet).

        Drops the exits after `exit_index` and the blocks of that exit past the last chosen one; with
        `prune_head` every remaining head becomes an Identity (no pooling), with `prune_norm` that exit's
        final norm too. The pruned model is a feature extractor: it no longer fits the config's checkpoints.
        """
        k = exit_position(self.num_exits, exit_index)
        take, max_index = take_indices(len(self.exits[k].blocks), indices)
        self.exits = self.exits[:k + 1]
        self.exits[k].blocks = self.exits[k].blocks[:max_index + 1]
        if prune_norm:
            self.exits[k].norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def _per_exit(self, values: list):
        return tuple(values) if len(values) > 1 else values[0]

    # ---- classifier -----------------------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self):
        """The heads of the exits, in exit order (the head itself for a single-exit model)."""
        return self._per_exit([e.head for e in self.exits])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New heads for `num_classes` on every exit (0: identity heads); pooling kept unless given.

        The config follows (`config.num_classes`), so checkpoints saved afterwards load into it.
        """
        for exit_ in self.exits:
            exit_.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)

    # ---- training helpers -----------------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block of every exit in the backward pass instead of storing its activations."""
        for exit_ in self.exits:
            exit_.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm parameter groups (layer-wise lr decay): depth counted within each exit (module docstring)."""
        return dict(
            stem=r"^exits\.\d+\.(?:cls_token|pos_embed|tokens_to_token|patch_embed|relation_reuse_conv)",
            blocks=r"^exits\.\d+\.blocks\.(\d+)" if coarse else [
                (r"^exits\.\d+\.blocks\.(\d+)", None), (r"^exits\.\d+\.norm", (99999,))],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm convention: parameters to keep out of weight decay (cls tokens, learned position embeddings)."""
        params = dict(self.named_parameters())
        return {f"exits.{k}.{name}" for k in range(self.num_exits) for name in ("cls_token", "pos_embed")
                if f"exits.{k}.{name}" in params}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like nn.Module.load_state_dict, for any naming/container `common.checkpoints` understands.

        strict=True raises `CheckpointMismatchError` (missing / unexpected / mis-shaped keys) before
        copying anything.
        """
        tensors, naming, extracted = canonical_state_dict(state_dict, self.config)
        if strict:
            validate(extracted.tensors, self.config, naming, f"model {self.config.name!r} ({naming} names)")
        return super().load_state_dict(tensors, strict=strict, assign=assign)

