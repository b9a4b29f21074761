"""Adaptive inference: real early exit, batch by batch (DESIGN.md §1; issue 7). Mirror of torch_impl.

    res = adaptive_forward(model, x, thresholds)       # or model.forward_adaptive(x, thresholds)
    res.logits      # (B, num_classes): each sample's logits from the exit it left at, in input order
    res.exit_index  # (B,) int64: that exit
    res.exit_counts # (K,) samples leaving at each exit

Exit k runs only on the samples still active after exit k-1: the input rows, the reused features
(B, T, D) and the reused relations (L x (B, H, T, T)) are gathered (`ops.gather`) for those samples only
(no copy while every sample is still there), and once every sample has left the later exits do not run
at all. The decision after exit k is the one exit rule of `common.adaptive` (float64 scores from numpy,
`common.thresholds.rule.exit_mask`), so it equals the offline rule applied to the full cascade's logits.

Each exit runs as an `ExitStage` cell. In PYNATIVE mode it runs op by op; in GRAPH mode it is compiled
once per exit with a dynamic batch axis (`Cell.set_inputs` with `None` as the batch size), so any number
of active samples reuses the same graph. The gathers and the exit rule run between the stages (on the
host: the active set must be known before the next stage starts).

`fast=True` (default), as in torch_impl: the reused relations are computed with larger matmuls
(`ViTExit.reuse_relations(fast=True)`) and the last exit stops returning its attention logits. MindSpore
has no fused attention kernel on CPU, so that exit's attention math stays explicit (`attention.py`).
Logits equal the full cascade's within fp32 rounding; `fast=False` runs exactly the default kernels.
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from common.adaptive import ExitTracker, leave_mask, resolve_thresholds, stage_needs

from .exit import check_image


class AdaptiveResult(NamedTuple):
    logits: Tensor  # (B, num_classes), the logits of the exit each sample left at, in input order
    exit_index: Tensor  # (B,) int64
    exit_counts: tuple  # (K,) ints: samples leaving at each exit


class ExitStage(nn.Cell):
    """One exit as its own cell: `construct(x, *reused) -> (logits, features, relations or None)`.

    `reused` holds the previous exit's features and/or relations (a tuple), as the exit's reuse flags say.
    `auto_prefix=False`: wrapping the exit must not rename the model's parameters.
    """

    def __init__(self, exit_: nn.Cell, need_relations: bool, fast: bool):
        super().__init__(auto_prefix=False)
        self.exit_ = exit_
        self.need_relations = need_relations
        self.fast = fast
        self.feature_reuse = exit_.feature_reuse
        self.relation_reuse = exit_.relation_reuse

    def construct(self, x, *reused):
        features = reused[0] if self.feature_reuse else None
        relations = reused[-1] if self.relation_reuse else None
        return self.exit_(x, features, relations, False, self.need_relations, self.fast)


_STAGES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {key: ExitStage}


def _dynamic(t: Tensor) -> Tensor:
    return Tensor(shape=[None] + list(t.shape[1:]), dtype=t.dtype)


def exit_stage(model, k: int, need_relations: bool, fast: bool, args: tuple) -> ExitStage:
    """The cached stage of exit k; in GRAPH mode its inputs are declared with a dynamic batch axis."""
    graph = ms.get_context("mode") == ms.GRAPH_MODE
    signature = tuple((tuple(a.shape[1:]), str(a.dtype)) for a in _flat(args)) if graph else None
    key = (k, need_relations, fast, graph, signature)
    stages = _STAGES.setdefault(model, {})
    if key not in stages:
        stage = ExitStage(model.exits[k], need_relations, fast)
        if graph:
            stage.set_inputs(*(ms.mutable(tuple(_dynamic(r) for r in a)) if isinstance(a, tuple) else _dynamic(a)
                               for a in args))
        stages[key] = stage
    return stages[key]


def _flat(args: tuple) -> list:
    return [t for a in args for t in (a if isinstance(a, tuple) else (a,))]


def _gather(t: Tensor, rows: Tensor | None) -> Tensor:
    return t if rows is None else ops.gather(t, rows, 0)


def adaptive_forward(model, x: Tensor, thresholds, criterion: str | None = None, *,
                     budget=None, fast: bool = True) -> AdaptiveResult:
    """Early-exit inference of a `DVT` in eval mode on a batch `x` (B, C, H, W), PYNATIVE or GRAPH mode.

    `thresholds`: K-1 or K numbers (the last exit's is ignored), (B, K-1) / (B, K) numbers (one row per
    sample), or a `ThresholdCurve` with `budget` (one number, or (B,) per sample; see
    `common.adaptive.resolve_thresholds`); `criterion`: "confidence" (default) or "entropy".
    """
    if model.training:
        raise ValueError("adaptive inference needs the model in eval mode (dropout would change the exits); "
                         "call model.set_train(False)")
    k_exits = len(model.exits)
    t, criterion = resolve_thresholds(thresholds, k_exits, criterion, budget, batch_size=x.shape[0])
    cfg = model.config
    check_image(x, cfg.in_chans, cfg.img_size, model.exits[0].cls_token.dtype)
    track = ExitTracker(x.shape[0], k_exits, t)
    pieces = []  # logits of the leaving samples, stage by stage
    active = None  # input rows still in the cascade as a Tensor; None while they are all there, in order
    features = relations = None
    for k in range(k_exits):
        if track.done:
            break  # empty stage: nothing runs
        send_features, send_relations, explicit = stage_needs(model.exits, k, fast)
        args = (_gather(x, active),) + tuple(r for r in (features, relations) if r is not None)
        stage = exit_stage(model, k, explicit, fast, args)
        logits, feats, rels = stage(*(ms.mutable(a) if isinstance(a, tuple) else a for a in args))
        last = k == k_exits - 1  # the last exit takes everyone: no score, no device sync
        leave = None if last else leave_mask(logits.asnumpy().astype(np.float32), track.active_thresholds(), k,
                                             criterion)
        step = track.record(k, leave)
        if step.num_left:
            pieces.append(logits if step.leave is None else _gather(logits, _index(step.leave)))
        if step.done:
            break  # every sample has left: later exits never run
        keep = None if step.keep is None else _index(step.keep)
        features = _gather(feats, keep) if send_features else None
        relations = tuple(_gather(r, keep) for r in rels) if send_relations else None
        feats = rels = None  # free the rows that left before the next exit runs
        if keep is not None:
            active = _index(track.rows)
    inverse = track.inverse_order()
    if not pieces:
        logits = ops.zeros((0, cfg.num_classes), x.dtype)
    else:
        logits = _gather(pieces[0] if len(pieces) == 1 else ops.cat(pieces),
                         None if inverse is None else _index(inverse))
    return AdaptiveResult(logits, Tensor(track.exit_index), tuple(track.counts))


def _index(rows: np.ndarray) -> Tensor:
    return Tensor(rows.astype(np.int32))
