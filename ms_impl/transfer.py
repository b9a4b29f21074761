"""Starting a training run from existing weights (`--initial-checkpoint`), e.g. ImageNet -> CIFAR.

Mirror of torch_impl/transfer.py: every parameter must load with its shape, except the classifier heads
(`exits.k.head.*`): heads of another size, or missing heads, are left freshly initialised and reported; the
heads of a checkpoint loaded into a model without heads (`num_classes=0`) are dropped. The first layer of
every exit is adapted to the model's input channels (`common.input_channels`). Anything else that does
not fit raises `CheckpointMismatchError` before a single tensor is copied.
Accepts what `ms_impl.checkpoint` reads (`.ckpt`, `.safetensors`; canonical, MindSpore or reference names).
"""
from __future__ import annotations

import re

import numpy as np
from mindspore import Tensor

from common.checkpoints import (CheckpointMismatchError, MismatchReport, check_against_config, extract_state_dict,
                                resolve_naming)
from common.input_channels import adapt_input_channels
from common.naming import rename

from .checkpoint import parameter_to_numpy, read_checkpoint

HEAD = re.compile(r"^exits\.\d+\.head\.")


def load_for_transfer(model, path, *, use_ema: bool = False) -> list[str]:
    """Load `path` into `model` except heads that do not fit; returns the re-initialised head modules."""
    cfg = model.config
    extracted = extract_state_dict(read_checkpoint(path), use_ema=use_ema)
    with_heads = cfg if cfg.num_classes else cfg.replace(num_classes=1)  # head names resolve in any naming
    naming = resolve_naming(extracted.tensors.keys(), with_heads)
    tensors = rename({k: parameter_to_numpy(v) for k, v in extracted.tensors.items()}, with_heads, naming,
                     "canonical")
    adapt_input_channels(tensors, cfg)
    report = check_against_config({k: tuple(v.shape) for k, v in tensors.items()}, cfg, "canonical")
    other = MismatchReport(missing=[k for k in report.missing if not HEAD.match(k)],
                           unexpected=[k for k in report.unexpected if not HEAD.match(k)],
                           mis_shaped=[m for m in report.mis_shaped if not HEAD.match(m[0])])
    if not other.ok:
        raise CheckpointMismatchError(other, f"model {cfg.name!r} (file {path}, {naming} names; only the "
                                             "classifier heads may differ)")
    reinit = {m[0] for m in report.mis_shaped} | set(report.missing)
    keep = rename({k: v for k, v in tensors.items() if k not in reinit and k not in report.unexpected}, cfg,
                  "canonical", "mindspore")
    params = dict(model.parameters_and_names())
    for name, value in keep.items():
        params[name].set_data(Tensor(np.ascontiguousarray(value), params[name].dtype))
    return sorted({k.rsplit(".", 1)[0] for k in reinit})
