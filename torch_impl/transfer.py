"""Starting a training run from existing weights (`--initial-checkpoint`), e.g. ImageNet -> CIFAR.

Every parameter must load with its shape, except the classifier heads (`exits.k.head.*`): heads of
another size, or missing heads, are left freshly initialised and reported; the heads of a checkpoint
loaded into a model without heads (`num_classes=0`) are dropped. The first layer of every exit is
adapted to the model's input channels (`common.input_channels`). Anything else that does not fit raises
`CheckpointMismatchError` before a single tensor is copied.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from common.checkpoints import CheckpointMismatchError, MismatchReport, check_against_config
from common.input_channels import adapt_input_channels, first_layer

from .checkpoint import canonical_state_dict, read_checkpoint

HEAD = re.compile(r"^exits\.\d+\.head\.")


def adapt_first_layers(tensors: dict, cfg) -> dict:
    """Canonical torch tensors with each exit's first layer adapted to `cfg.in_chans` (unchanged if it fits)."""
    names = [f"{layer}.{p}" for k in range(cfg.num_exits) for layer in first_layer(cfg, k) if layer
             for p in ("weight", "bias")]
    arrays = {n: tensors[n].detach().cpu().numpy() for n in names if n in tensors}
    if adapt_input_channels(arrays, cfg):
        tensors = dict(tensors)
        for name, array in arrays.items():
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array)).to(tensors[name].dtype)
    return tensors


def load_for_transfer(model, path, *, use_ema: bool = False) -> list[str]:
    """Load `path` into `model` except heads that do not fit; returns the re-initialised head modules."""
    cfg = model.config
    with_heads = cfg if cfg.num_classes else cfg.replace(num_classes=1)  # head names resolve in any naming
    tensors, naming, _ = canonical_state_dict(read_checkpoint(path), with_heads, use_ema=use_ema)
    tensors = adapt_first_layers(tensors, cfg)
    report = check_against_config({k: tuple(v.shape) for k, v in tensors.items()}, cfg, "canonical")
    other = MismatchReport(missing=[k for k in report.missing if not HEAD.match(k)],
                           unexpected=[k for k in report.unexpected if not HEAD.match(k)],
                           mis_shaped=[m for m in report.mis_shaped if not HEAD.match(m[0])])
    if not other.ok:
        raise CheckpointMismatchError(other, f"model {cfg.name!r} (file {path}, {naming} names; only the "
                                             "classifier heads may differ)")
    reinit = {m[0] for m in report.mis_shaped} | set(report.missing)
    tensors = {k: v for k, v in tensors.items() if k not in reinit and k not in report.unexpected}
    with torch.no_grad():
        torch.nn.Module.load_state_dict(model, tensors, strict=False)
    return sorted({k.rsplit(".", 1)[0] for k in reinit})
