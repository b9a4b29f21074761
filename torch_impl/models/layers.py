"""Small building blocks shared by every module of the PyTorch DVT.

`Mlp`, `DropPath` and `trunc_normal_` come from timm (the reference is built on timm too). What is
ours: the GELU factory (exact erf vs tanh per config, DESIGN.md §2), the init rule every module
uses, and the autocast helper that keeps the Performer's random features in fp32.
"""
from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn
from timm.layers import DropPath, Mlp, trunc_normal_

__all__ = ["DropPath", "Mlp", "trunc_normal_", "gelu_layer", "drop_path_layer", "init_weights",
           "full_precision", "compute_dtype"]


def gelu_layer(kind: str) -> type[nn.Module] | partial:
    """GELU module factory: 'erf' is the exact GELU of the reference, 'tanh' the approximation."""
    if kind == "erf":
        return nn.GELU
    if kind == "tanh":
        return partial(nn.GELU, approximate="tanh")
    raise ValueError(f"gelu must be 'erf' or 'tanh', got {kind!r}")


def drop_path_layer(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def init_weights(module: nn.Module) -> None:
    """Reference init: Linear trunc_normal(.02) and zero bias, LayerNorm 1/0; Conv2d keeps torch's default.

    Meta tensors (shape-only models) are left alone: there is nothing to fill.
    """
    if any(p.is_meta for p in module.parameters(recurse=False)):
        return
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def full_precision(x: torch.Tensor):
    """Context that turns autocast off for `x`'s device (a no-op when autocast is not on).

    Used with `.to(compute_dtype(x))` for numerically fragile parts (exp of random features).
    """
    try:
        enabled = torch.is_autocast_enabled(x.device.type)
    except (RuntimeError, ValueError, TypeError):  # device types autocast does not know (meta)
        enabled = False
    return torch.autocast(x.device.type, enabled=False) if enabled else contextlib.nullcontext()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """At least fp32: half types go up to fp32, fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)
