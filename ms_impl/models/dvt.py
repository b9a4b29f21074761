"""The DVT cascade: K exits on the same image, each reusing the one before (DESIGN.md §1).

    model = DVT(common.get_config("dvt_t2t_vit_12"))
    logits = model(x)                                    # tuple of K (B, num_classes), train and eval
    outs = model.forward_intermediates(x, num_exits=2)   # list of ExitOutput, for parity/FLOPs
    res = model.forward_adaptive(x, thresholds)          # early exit: AdaptiveResult (adaptive.py)

Runs in PYNATIVE and GRAPH mode (`mindspore.set_context(mode=GRAPH_MODE)` or `mindspore.jit`) with
any batch size. Parameter names equal `common.naming.name_map(cfg, 'mindspore')`: the torch names
with LayerNorm weight/bias -> gamma/beta.
"""
from __future__ import annotations

from mindspore import nn

from common.config import DVTConfig

from .adaptive import AdaptiveResult, adaptive_forward
from .exit import ViTExit


class DVT(nn.Cell):
    """Cascade of `ViTExit`s built from one `DVTConfig` (`self.config`)."""

    def __init__(self, cfg: DVTConfig):
        super().__init__()
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.exits = nn.CellList([ViTExit(cfg, k) for k in range(cfg.num_exits)])

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def construct(self, x):
        """(B, C, H, W) -> tuple of per-exit logits (B, num_classes); one tensor for a single-exit model."""
        outputs = self._cascade(x, len(self.exits), False)
        if len(self.exits) == 1:
            return outputs[0][0]
        logits = ()
        for out in outputs:
            logits += (out[0],)
        return logits

    def forward_intermediates(self, x, num_exits: int | None = None) -> list:
        """Run exits 0..num_exits-1 and return what each computed (same code path as `construct`).

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

        A Python-side entry point like `forward_intermediates`; in GRAPH mode each exit is compiled once
        with a dynamic batch axis.
        """
        return adaptive_forward(self, x, thresholds, criterion, budget=budget, fast=fast)

    def _cascade(self, x, num_exits: int, collect: bool):
        outputs = ()
        features, relations = None, None
        for k, exit_ in enumerate(self.exits):
            if k < num_exits:
                out = exit_(x, features if exit_.feature_reuse else None,
                            relations if exit_.relation_reuse else None, collect)
                outputs += (out,)
                features, relations = out[1], out[2]
        return outputs

    def no_weight_decay(self) -> set:
        """Parameters to keep out of weight decay (timm convention, same names as torch_impl)."""
        return {f"exits.{k}.{name}" for k in range(self.num_exits) for name in ("cls_token", "pos_embed")}
