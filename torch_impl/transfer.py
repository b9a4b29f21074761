"""Starting a training run from existing weights (`--initial-checkpoint`), e.g. ImageNet -> CIFAR.

Every parameter must load with its shape, except the classifier heads (`exits.k.head.*`): heads of
another size, or missing heads, are left freshly initialised and reported. Anything else that does not
fit raises `CheckpointMismatchError` before a single tensor is copied.
"""
from __future__ import annotations

import re

import torch

from common.checkpoints import CheckpointMismatchError, MismatchReport, check_against_config

from .checkpoint import canonical_state_dict, read_checkpoint

HEAD = re.compile(r"^exits\.\d+\.head\.")


def load_for_transfer(model, path, *, use_ema: bool = False) -> list[str]:
    """Load `path` into `model` except heads that do not fit; returns the re-initialised head modules."""
    cfg = model.config
    tensors, naming, _ = canonical_state_dict(read_checkpoint(path), cfg, use_ema=use_ema)
    report = check_against_config({k: tuple(v.shape) for k, v in tensors.items()}, cfg, "canonical")
    other = MismatchReport(missing=[k for k in report.missing if not HEAD.match(k)], unexpected=report.unexpected,
                           mis_shaped=[m for m in report.mis_shaped if not HEAD.match(m[0])])
    if not other.ok:
        raise CheckpointMismatchError(other, f"model {cfg.name!r} (file {path}, {naming} names; only the "
                                             "classifier heads may differ)")
    skipped = {m[0] for m in report.mis_shaped} | set(report.missing)
    tensors = {k: v for k, v in tensors.items() if k not in skipped}
    with torch.no_grad():
        torch.nn.Module.load_state_dict(model, tensors, strict=False)
    return sorted({k.rsplit(".", 1)[0] for k in skipped})
