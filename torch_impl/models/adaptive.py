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

`fast=True` (default) uses inference kernels that the FLOPs-counted default forward does not: every
exit runs its attention as one fused `scaled_dot_product_attention`, and an exit whose attention logits
the next exit reuses computes them after its exit decision, for the samples that go on only ("deferred
relations", `relations="deferred"`: each block's q and k are kept; `"recompute"`: each block's attention
input is kept and q, k are recomputed for those rows; `"explicit"`: explicit attention with logits for
every row, as before deferral). Logits then equal the full cascade's within fp32 rounding (~1e-7
measured) and exit decisions are the same; `fast=False` runs exactly the default kernels.
`ms_impl.models.adaptive` is the MindSpore mirror.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from common.adaptive import ExitTracker, leave_mask, resolve_thresholds, stage_needs

from .exit import check_image


DEFER = {"deferred": "qk", "recompute": "input", "explicit": None}  # `relations` -> ViTExit.forward's defer_relations


class AdaptiveResult(NamedTuple):
    logits: torch.Tensor  # (B, num_classes), the logits of the exit each sample left at, in input order
    exit_index: torch.Tensor  # (B,) int64, on the logits' device
    exit_counts: tuple  # (K,) ints: samples leaving at each exit


def _gather(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return t if rows is None else t.index_select(0, rows)


@torch.no_grad()
def adaptive_forward(model, x: torch.Tensor, thresholds, criterion: str | None = None, *,
                     budget=None, fast: bool = True, relations: str = "deferred", compile: bool | dict = False,
                     graphs=None) -> AdaptiveResult:
    """Early-exit inference of a `DVT` in eval mode on a batch `x` (B, C, H, W).

    `thresholds`: K-1 or K numbers (the last exit's is ignored), (B, K-1) / (B, K) numbers (one row per
    sample), or a `ThresholdCurve` with `budget` (one number, or (B,) per sample; see
    `common.adaptive.resolve_thresholds`); `criterion`: "confidence" (default) or "entropy".
    `relations`: how the fast path hands attention logits on ("deferred", "recompute" or "explicit").
    `compile=True` (or a dict of `torch.compile` options): every exit stage runs compiled (`compiled_stage`,
    dynamic batch size: one graph per stage whatever the number of samples still in); the first call compiles.
    `graphs`: a `torch_impl.cuda_graphs.StageGraphs` kept by the caller: every stage runs as a CUDA graph
    of its padded batch size, captured on first use.
    """
    if relations not in DEFER:
        raise ValueError(f"relations must be one of {sorted(DEFER)}, got {relations!r}")
    if model.training:
        raise ValueError("adaptive inference needs the model in eval mode (dropout would change the exits); "
                         "call model.eval()")
    k_exits = len(model.exits)
    t, criterion = resolve_thresholds(thresholds, k_exits, criterion, budget, batch_size=x.shape[0])
    cfg = model.config
    check_image(x, cfg.in_chans, cfg.img_size, model.exits[0].cls_token.dtype)
    if compile and torch.is_inference_mode_enabled() and not x.is_inference():
        x = x.clone()  # every stage then sees inference tensors: one compiled graph per stage, not two
    track = ExitTracker(x.shape[0], k_exits, t)
    pieces = []  # logits of the leaving samples, stage by stage
    active = None  # input rows still in the cascade, on x's device; None while they are all there, in order
    features = reused = None  # what exit k hands on to exit k+1 (for the rows still in)
    for k, exit_ in enumerate(model.exits):
        if compile:
            exit_ = compiled_stage(exit_, {} if compile is True else compile)
        if track.done:
            break  # empty stage: nothing runs
        send_features, send_relations, explicit = stage_needs(model.exits, k, fast)
        defer = DEFER[relations] if fast and send_relations else None
        options = dict(need_relations=explicit, fast=fast, defer_relations=defer)
        if graphs is not None:
            logits, feats, rels = graphs.run(model, k, exit_, _gather(x, active), features, reused, **options)
        else:
            logits, feats, rels = exit_(_gather(x, active), features, reused, **options)
        last = k == k_exits - 1  # the last exit takes everyone: no score, no device sync
        leave = None if last else leave_mask(logits.float().cpu().numpy(), track.active_thresholds(), k, criterion)
        step = track.record(k, leave)
        if step.num_left:
            pieces.append(logits if step.leave is None else _gather(logits, _index(step.leave, logits)))
        if step.done:
            break  # every sample has left: later exits never run
        keep = None if step.keep is None else _index(step.keep, x)
        features = _gather(feats, keep) if send_features else None
        if not send_relations:
            reused = None
        elif defer:
            reused = rels.rows(keep)  # the logits of the rows that go on, computed now
        else:
            reused = tuple(_gather(r, keep) for r in rels)
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


_COMPILED: dict[str, object] = {}  # torch.compile options -> the compiled stage call


def _call_stage(exit_, *args, **kwargs):
    return exit_(*args, **kwargs)


def compiled_stage(exit_, options: dict | None = None):
    """Exit `exit_` as a `torch.compile`d stage (`dynamic=True` unless `options` say otherwise).

    Each exit is compiled on its own (the host decides between stages, DESIGN.md §8) with a dynamic batch
    dimension, since the number of samples reaching an exit changes from batch to batch. One compiled call
    per set of options serves every exit and model: dynamo keeps a graph per exit configuration (parameters
    are graph inputs), so the compiled code is not tied to a module instance. Under compiling, relation
    reuse takes its batched form (`ViTExit.reuse_relations`).
    """
    options = {"dynamic": True, **(options or {})}
    key = repr(sorted(options.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_call_stage, **options)
    return functools.partial(_COMPILED[key], exit_)


def _index(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(rows).to(like.device)
