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

from common.adaptive import leave_mask, resolve_thresholds

from .exit import check_image


class AdaptiveResult(NamedTuple):
    logits: torch.Tensor  # (B, num_classes), the logits of the exit each sample left at, in input order
    exit_index: torch.Tensor  # (B,) int64, on the logits' device
    exit_counts: tuple  # (K,) ints: samples leaving at each exit


def _gather(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return t if rows is None else t.index_select(0, rows)


def stage_needs(model, k: int, fast: bool = True) -> tuple[bool, bool, bool]:
    """What exit k must compute for exit k+1: (its features, its relations, explicit attention logits)."""
    nxt = model.exits[k + 1] if k + 1 < len(model.exits) else None
    features = nxt is not None and nxt.feature_reuse
    relations = nxt is not None and nxt.relation_reuse
    return features, relations, relations or not fast


@torch.no_grad()
def adaptive_forward(model, x: torch.Tensor, thresholds, criterion: str | None = None, *,
                     budget: float | None = None, fast: bool = True) -> AdaptiveResult:
    """Early-exit inference of a `DVT` in eval mode on a batch `x` (B, C, H, W).

    `thresholds`: K-1 or K numbers (the last exit's is ignored), or a `ThresholdCurve` with `budget`
    (see `common.adaptive.resolve_thresholds`); `criterion`: "confidence" (default) or "entropy".
    """
    if model.training:
        raise ValueError("adaptive inference needs the model in eval mode (dropout would change the exits); "
                         "call model.eval()")
    k_exits = len(model.exits)
    t, criterion = resolve_thresholds(thresholds, k_exits, criterion, budget)
    cfg = model.config
    check_image(x, cfg.in_chans, cfg.img_size)
    exit_np = np.full(x.shape[0], k_exits - 1, dtype=np.int64)
    counts = [0] * k_exits
    pieces, order = [], []  # logits of the leaving samples, stage by stage, and their input rows
    rows = np.arange(x.shape[0])  # input rows still in the cascade
    active = None  # the same rows on x's device; None while they are all there, in order
    features = relations = None
    for k, exit_ in enumerate(model.exits):
        n = rows.size
        if n == 0:
            break  # empty stage: nothing runs
        send_features, send_relations, explicit = stage_needs(model, k, fast)
        logits, feats, rels = exit_(_gather(x, active), features, relations, need_relations=explicit, fast=fast)
        last = k == k_exits - 1  # the last exit takes everyone: no score, no device sync
        leave = np.ones(n, dtype=bool) if last else leave_mask(
            logits.float().cpu().numpy(), t, k, criterion)
        n_leave = int(leave.sum())
        counts[k] = n_leave
        if n_leave:
            exit_np[rows[leave]] = k
            order.append(rows[leave])
            pieces.append(logits if n_leave == n else logits[torch.from_numpy(leave).to(logits.device)])
        if n_leave == n:
            break  # every sample has left: later exits never run
        keep = None if n_leave == 0 else torch.from_numpy(np.flatnonzero(~leave)).to(x.device)
        features = _gather(feats, keep) if send_features else None
        relations = tuple(_gather(r, keep) for r in rels) if send_relations else None
        feats = rels = None  # free the rows that left before the next exit runs
        if keep is not None:
            rows = rows[~leave]
            active = torch.from_numpy(rows).to(x.device)
    return AdaptiveResult(_in_input_order(pieces, order, x, cfg.num_classes),
                          torch.from_numpy(exit_np).to(x.device), tuple(counts))


def _in_input_order(pieces: list, order: list, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Concatenate the stages' logits and put the rows back in input order (no copy if already in order)."""
    if not pieces:
        return x.new_empty(0, num_classes)
    rows = np.concatenate(order)
    logits = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if np.array_equal(rows, np.arange(rows.size)):
        return logits
    inverse = np.empty_like(rows)
    inverse[rows] = np.arange(rows.size)
    return logits.index_select(0, torch.from_numpy(inverse).to(logits.device))
