"""The DVT cascade: K exits on the same image, each reusing the one before (DESIGN.md §1).

    model = DVT(common.get_config("dvt_t2t_vit_12"))
    logits = model(x)                               # tuple of K (B, num_classes), train and eval
    outs = model.forward_intermediates(x, num_exits=2)   # list of ExitOutput, for parity/FLOPs
    res = model.forward_adaptive(x, thresholds)          # early exit: AdaptiveResult (adaptive.py)

`load_state_dict` accepts the canonical, reference (official DVT) and MindSpore namings as well as
checkpoint containers, because timm's `create_model(..., checkpoint_path=...)` hands it whatever
the file holds; strict loads are validated first, so a misfit never loads half-way.
"""
from __future__ import annotations

import torch
from torch import nn

from common.config import DVTConfig

from ..checkpoint import canonical_state_dict, validate
from .adaptive import AdaptiveResult, adaptive_forward
from .exit import ExitOutput, ViTExit


class DVT(nn.Module):
    """Cascade of `ViTExit`s built from one `DVTConfig` (`self.config`)."""

    def __init__(self, cfg: DVTConfig):
        super().__init__()
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.exits = nn.ModuleList([ViTExit(cfg, k) for k in range(cfg.num_exits)])

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, x: torch.Tensor):
        """(B, C, H, W) -> tuple of per-exit logits (B, num_classes); one tensor for a single-exit model."""
        logits = tuple(out[0] for out in self._cascade(x, self.num_exits, collect=False))
        return logits if self.num_exits > 1 else logits[0]

    def forward_intermediates(self, x: torch.Tensor, num_exits: int | None = None) -> list[ExitOutput]:
        """Run exits 0..num_exits-1 and return what each computed (same code path as forward)."""
        if num_exits is None:
            num_exits = self.num_exits
        if not 1 <= num_exits <= self.num_exits:
            raise ValueError(f"num_exits must be in 1..{self.num_exits}, got {num_exits}")
        return self._cascade(x, num_exits, collect=True)

    def forward_adaptive(self, x: torch.Tensor, thresholds, criterion: str | None = None, *,
                         budget: float | None = None, fast: bool = True) -> AdaptiveResult:
        """Early exit: each sample runs exits until one is confident enough (`adaptive.adaptive_forward`)."""
        return adaptive_forward(self, x, thresholds, criterion, budget=budget, fast=fast)

    def _cascade(self, x: torch.Tensor, num_exits: int, collect: bool) -> list:
        outputs, features, relations = [], None, None
        for k in range(num_exits):
            exit_ = self.exits[k]
            out = exit_(x, features if exit_.feature_reuse else None,
                        relations if exit_.relation_reuse else None, collect=collect)
            outputs.append(out)
            features, relations = out[1], out[2]
        return outputs

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm convention: parameters to keep out of weight decay."""
        return {f"exits.{k}.{name}" for k in range(self.num_exits) for name in ("cls_token", "pos_embed")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like nn.Module.load_state_dict, for any naming/container `common.checkpoints` understands.

        strict=True raises `CheckpointMismatchError` (missing / unexpected / mis-shaped keys) before
        copying anything.
        """
        tensors, naming, extracted = canonical_state_dict(state_dict, self.config)
        if strict:
            validate(extracted.tensors, self.config, naming, f"model {self.config.name!r} ({naming} names)")
        return super().load_state_dict(tensors, strict=strict, assign=assign)
