"""A model's forward output seen as a tuple of per-exit logits, for cascades and single-exit backbones alike.

A DVT cascade's forward returns one logits tensor per exit (the DVT contract); a single-exit backbone
(`t2t_vit_12`, `deit_small`, any config with one exit) returns one tensor, as timm models do. Losses,
evaluation, parity checks and benchmarks that take either kind go through `per_exit`. Framework-neutral
(no tensor of either framework is a tuple) and usable inside a MindSpore GRAPH-mode `construct`.
"""
from __future__ import annotations


def per_exit(outputs) -> tuple:
    """`outputs` of a forward (one tensor, or a tuple/list of per-exit tensors) -> tuple of per-exit tensors."""
    if isinstance(outputs, (tuple, list)):
        return tuple(outputs)
    return (outputs,)
