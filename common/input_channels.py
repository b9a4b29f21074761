"""Adapting a checkpoint's first layers to another number of input channels (timm `in_chans`, MindCV
`in_channels`), for both frameworks: canonical names, numpy arrays.

DeiT exits start with a Conv2d: its weight (D, C, k, k) follows timm's `adapt_input_conv` rule (one
channel: the sum over the source channels; n channels: the source channels repeated cyclically and
scaled by C / n). T2T exits start with LayerNorm(C*k*k) then a Linear on the unfolded k x k patch
(channel-major, as `F.unfold` / `ops.unfold` lay it out). The LayerNorm's affine part is folded into the
Linear first (exact for any input), then the Linear's weight, viewed as (O, C, k, k), follows the same
rule and the new LayerNorm is plain (weight 1, bias 0). For a one-channel image the adapted model then
computes exactly what the source model computes on that image repeated over its C channels (a
LayerNorm over C repeated copies has the same mean and variance). The Performer's `kqv` has a bias that
absorbs the LayerNorm bias exactly; the transformer token layers' `qkv` has none, so there the new
LayerNorm bias is the least-squares fit of that term (approximate).

The rule is written out here (not timm's function) because `common` imports no framework and MindSpore
has no timm; a test checks the conv case against timm's `adapt_input_conv`.
"""
from __future__ import annotations

import math

import numpy as np

from .config import DVTConfig, T2TTokenizerConfig


def adapt_channels(weight: np.ndarray, in_chans: int) -> np.ndarray:
    """(O, C, ...) weights over C source channels -> (O, in_chans, ...) (timm's adapt_input_conv rule)."""
    base = weight.shape[1]
    if in_chans == base:
        return weight
    w = weight.astype(np.float64)
    if in_chans == 1:
        out = w.sum(axis=1, keepdims=True)
    else:
        repeat = int(math.ceil(in_chans / base))
        out = np.concatenate([w] * repeat, axis=1)[:, :in_chans] * (base / in_chans)
    return out.astype(weight.dtype)


def first_layer(cfg: DVTConfig, k: int) -> tuple[str, str | None]:
    """(canonical name of exit k's first Linear/Conv2d, of the LayerNorm before it or None)."""
    tok = cfg.exits[k].tokenizer
    if not isinstance(tok, T2TTokenizerConfig):
        return f"exits.{k}.patch_embed.proj", None
    p = f"exits.{k}.tokens_to_token.attention1"
    return (f"{p}.kqv" if tok.token_layer == "performer" else f"{p}.attn.qkv"), f"{p}.norm1"


def adapt_input_channels(tensors: dict, cfg: DVTConfig) -> list[str]:
    """Rewrite, in place, each exit's first-layer tensors of `tensors` (canonical names -> numpy) from the
    checkpoint's channel count to `cfg.in_chans`. Returns the layers changed (none when the counts match)."""
    changed = []
    for k, ex in enumerate(cfg.exits):
        linear, norm = first_layer(cfg, k)
        w = tensors.get(f"{linear}.weight")
        if w is None:
            continue
        w = np.asarray(w)
        if norm is None:  # Conv2d (D, C, k, k)
            if w.ndim == 4 and w.shape[1] != cfg.in_chans:
                tensors[f"{linear}.weight"] = adapt_channels(w, cfg.in_chans)
                changed.append(linear)
            continue
        patch = ex.tokenizer.splits[0].kernel
        area = patch * patch
        if w.ndim != 2 or w.shape[1] % area or w.shape[1] // area == cfg.in_chans:
            continue
        src, out_dim = w.shape[1] // area, w.shape[0]
        ln_w = np.asarray(tensors[f"{norm}.weight"], dtype=np.float64)
        ln_b = np.asarray(tensors[f"{norm}.bias"], dtype=np.float64)
        folded = w.astype(np.float64) * ln_w[None]  # W diag(gamma): the LayerNorm scale moves into W
        beta = w.astype(np.float64) @ ln_b  # W beta: what the LayerNorm shift adds to the output
        new_w = adapt_channels(folded.reshape(out_dim, src, area), cfg.in_chans).reshape(out_dim, -1)
        width = new_w.shape[1]
        tensors[f"{norm}.weight"] = np.ones(width, dtype=w.dtype)
        if f"{linear}.bias" in tensors:
            tensors[f"{linear}.bias"] = (np.asarray(tensors[f"{linear}.bias"], dtype=np.float64) + beta).astype(w.dtype)
            tensors[f"{norm}.bias"] = np.zeros(width, dtype=w.dtype)
        else:
            tensors[f"{norm}.bias"] = np.linalg.lstsq(new_w, beta, rcond=None)[0].astype(w.dtype)
        tensors[f"{linear}.weight"] = new_w.astype(w.dtype)
        changed.append(linear)
    return changed
