"""Adaptive inference: real early exit, batch by batch (DESIGN.md §1; issue 7).

    res = adaptive_forward(model, x, thresholds)       # or model.forward_adaptive(x, thresholds)
    res.logits      # (B, num_classes): each sample's logits from the exit it left at, in input order
    res.exit_index  # (B,) int64: that exit
    res.exit_counts # (K,) samples leaving at each exit

Exit k runs only on the samples still active after exit k-1: the input rows, the reused features
(B, T, D) and the reused relations (L x (B, H, T, T)) are gathered for those samples only (no copy while
every sample is still there), and once every sample has left the later exits do not run at all: no
kernel is launched for an empty stage. The decision after exit k is the one exit rule of
`common.adaptive` (float64 scores from numpy, `common.thresholds.rule.exit_mask`), so it equals the
offline rule applied to the full cascade's logits.

`fast=True` (default) uses inference kernels that the FLOPs-counted default forward does not: an exit
whose attention logits no later exit reuses (always the last one) runs its attention as one fused
`scaled_dot_product_attention` (`need_relations=False`), and the reused relations are computed with
larger matmuls (`ViTExit.reuse_relations(fast=True)`). Logits then equal the full cascade's within fp32
rounding (~1e-7 measured); `fast=False` runs exactly the default kernels. `ms_impl.models.adaptive` is
the MindSpore mirror.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from common.adaptive import ExitTracker, leave_mask, resolve_thresholds, stage_needs

from .exit import check_image


class AdaptiveResult(NamedTuple):
    logits: torch.Tensor  # (B, num_classes), the logits of the exit each sample left at, in input order
    exit_index: torch.Tensor  # (B,) int64, on the logits' device
    exit_counts: tuple  # (K,) ints: samples leaving at each exit


def _gather(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return t if rows is None else t.index_select(0, rows)


@torch.no_grad()
def adaptive_forward(model, x: torch.Tensor, thresholds, criterion: str | None = None, *,
                     budget=None, fast: bool = True) -> AdaptiveResult:
    """Early-exit inference of a `DVT` in eval mode on a batch `x` (B, C, H, W).

    `thresholds`: K-1 or K numbers (the last exit's is ignored), (B, K-1) / (B, K) numbers (one row per
    sample), or a `ThresholdCurve` with `budget` (one number, or (B,) per sample; see
    `common.adaptive.resolve_thresholds`); `criterion`: "confidence" (default) or "entropy".
    """
    if model.training:
        raise ValueError("adaptive inference needs the model in eval mode (dropout would change the exits); "
                         "call model.eval()")
    k_exits = len(model.exits)
    t, criterion = resolve_thresholds(thresholds, k_exits, criterion, budget, batch_size=x.shape[0])
    cfg = model.config
    check_image(x, cfg.in_chans, cfg.img_size, model.exits[0].cls_token.dtype)
    track = ExitTracker(x.shape[0], k_exits, t)
    pieces = []  # logits of the leaving samples, stage by stage
    active = None  # input rows still in the cascade, on x's device; None while they are all there, in order
    features = relations = None
    for k, exit_ in enumerate(model.exits):
        if track.done:
            break  # empty stage: nothing runs
        send_features, send_relations, explicit = stage_needs(model.exits, k, fast)
        logits, feats, rels = exit_(_gather(x, active), features, relations, need_relations=explicit, fast=fast)
        last = k == k_exits - 1  # the last exit takes everyone: no score, no device sync
        leave = None if last else leave_mask(logits.float().cpu().numpy(), track.active_thresholds(), k, criterion)
        step = track.record(k, leave)
        if step.num_left:
            pieces.append(logits if step.leave is None else _gather(logits, _index(step.leave, logits)))
        if step.done:
            break  # every sample has left: later exits never run
        keep = None if step.keep is None else _index(step.keep, x)
        features = _gather(feats, keep) if send_features else None
        relations = tuple(_gather(r, keep) for r in rels) if send_relations else None
        feats = rels = None  # free the rows that left before the next exit runs
        if keep is not None:
            active = _index(track.rows, x)
    inverse = track.inverse_order()
    if not pieces:
        logits = x.new_empty(0, cfg.num_classes)
    else:
        logits = _gather(pieces[0] if len(pieces) == 1 else torch.cat(pieces),
                         None if inverse is None else _index(inverse, x))
    return AdaptiveResult(logits, torch.from_numpy(track.exit_index).to(x.device), tuple(track.counts))


def _index(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(rows).to(like.device)
