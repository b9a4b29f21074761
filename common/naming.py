"""The one table that maps parameters between namings (and, for the MindSpore port, tensor layouts).

- canonical: our PyTorch module paths, `exits.{k}.…` (see `param_spec`).
- mindspore: our MindSpore cells. Identical paths, except that `nn.LayerNorm` names its affine
  parameters `gamma`/`beta` where torch says `weight`/`bias`.
- reference: the public DVT PyTorch checkpoints (DESIGN.md §2): exits are the attributes
  `less_less_token` / `less_token` / `normal_token`, and the feature-reuse MLP is spelled
  `feature_resuse_mlp` (sic). A single-exit model has no prefix, which is also the layout of the
  original T2T-ViT / DeiT checkpoints.
- msref: the official MindSpore port's cells (DESIGN.md §3; two-exit DeiT cascades whose patch
  embedding has kernel = stride and no padding): `less_token.` / `normal_token.`, `layers.{i}`,
  `attn.to_{q,k,v,out}`, `mlp.ff{1,2}.dense`, `feature_resuse_mlp.{norm1,ff1.dense,ff2.dense}`,
  `stem.patch_to_embedding.dense`, `pos_embedding`, `head.0`, LayerNorm gamma/beta. Two parameters are
  held differently: our fused `attn.qkv` is its `to_q`, `to_k`, `to_v` stacked (rows q, k, v), and our
  Conv2d patch embedding (D, C, p, p) is its Dense weight (D, C*p*p) reshaped (it flattens each patch in
  (channel, row, column) order, the same order as the kernel). The math is the same, so the tensors are
  converted here instead of building a second module layout: measured on the full-size cascade with
  random weights, our conv + fused-qkv model reproduces the port's logits to 4.1e-6, and the port's own
  layouts (reshape + Linear, three projections) to 3.5e-6 — the layout is not where the two differ.
  Its cls token is `cls_token` as MindSpore >= 2 names it; the port's MindSpore 1.5 saved it as `cls`,
  which is read as an alias.

A canonical parameter is held by one or more "pieces" (`layout`): the C-order flattening of the
parameter is the concatenation of its pieces' C-order flattenings. A plain rename is one piece of the
same shape; a reshape is one piece of another shape; `qkv` is three pieces. `rename` applies a layout
in either direction; `name_map` is the plain one-to-one map of the namings that only rename.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from .config import DVTConfig, PatchTokenizerConfig
from .param_spec import parameter_specs

Naming = Literal["canonical", "torch", "mindspore", "reference", "msref"]
NAMINGS = ("canonical", "torch", "mindspore", "reference", "msref")
FILE_NAMINGS = ("canonical", "mindspore", "reference", "msref")  # the distinct layouts a file can have

# Reference attribute of each exit, by cascade length (the MindSpore port's 2-exit models use the
# same two last names).
REFERENCE_EXIT_PREFIXES: dict[int, tuple[str, ...]] = {
    1: ("",),
    2: ("less_token.", "normal_token."),
    3: ("less_less_token.", "less_token.", "normal_token."),
}
# Module renames inside an exit: (canonical, reference).
REFERENCE_MODULE_RENAMES: tuple[tuple[str, str], ...] = (
    (".feature_reuse_mlp.", ".feature_resuse_mlp."),
)
# LayerNorm affine parameters: canonical suffix -> MindSpore suffix.
MINDSPORE_LAYERNORM_RENAMES: dict[str, str] = {"weight": "gamma", "bias": "beta"}
# The MindSpore port, inside an exit: the first matching (canonical pattern, port replacement) applies.
MSREF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^pos_embed$", "pos_embedding"),
    (r"^patch_embed\.proj\.", "stem.patch_to_embedding.dense."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.to_out."),
    (r"^blocks\.(\d+)\.mlp\.fc(\d)\.", r"layers.\1.mlp.ff\2.dense."),
    (r"^blocks\.(\d+)\.feature_reuse_mlp\.0\.", r"layers.\1.feature_resuse_mlp.norm1."),
    (r"^blocks\.(\d+)\.feature_reuse_mlp\.1\.fc(\d)\.", r"layers.\1.feature_resuse_mlp.ff\2.dense."),
    (r"^blocks\.", "layers."),
    (r"^head\.", "head.0."),
)
MSREF_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
MSREF_ALIASES: dict[str, str] = {"cls": "cls_token"}  # MindSpore 1.5 spelling -> ours (inside an exit)


class NamingError(KeyError):
    pass


@dataclass(frozen=True)
class Piece:
    """One tensor of a checkpoint under some naming (see the module docstring)."""

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _canonical_to_reference(name: str, num_exits: int) -> str:
    if num_exits not in REFERENCE_EXIT_PREFIXES:
        raise NamingError(
            f"the reference naming covers cascades of 1-3 exits, not {num_exits}; "
            "use the canonical or MindSpore naming")
    head, k, rest = name.split(".", 2)
    assert head == "exits", name
    out = REFERENCE_EXIT_PREFIXES[num_exits][int(k)] + rest
    for ours, theirs in REFERENCE_MODULE_RENAMES:
        out = out.replace(ours, theirs)
    return out


def _canonical_to_mindspore(name: str, layernorm: bool) -> str:
    if not layernorm:
        return name
    stem, leaf = name.rsplit(".", 1)
    return f"{stem}.{MINDSPORE_LAYERNORM_RENAMES[leaf]}"


def check_msref(cfg: DVTConfig) -> None:
    """NamingError unless the port's layout can hold `cfg` (2-exit DeiT, patch kernel = stride, no padding)."""
    problem = None
    if cfg.family != "deit" or cfg.num_exits != 2:
        problem = f"a {cfg.num_exits}-exit {cfg.family} model"
    else:
        bad = [ex.tokenizer for ex in cfg.exits if not (isinstance(ex.tokenizer, PatchTokenizerConfig) and
                                                       ex.tokenizer.kernel == ex.tokenizer.stride and
                                                       ex.tokenizer.padding == 0)]
        if bad:
            problem = "a patch embedding whose kernel differs from its stride or that pads"
    if problem:
        raise NamingError(f"the MindSpore port's naming (msref) holds two-exit DeiT cascades with kernel = stride "
                          f"patch embeddings; {cfg.name!r} is {problem}")


def _msref_pieces(name: str, shape: tuple, layernorm: bool) -> tuple[Piece, ...]:
    head, k, rest = name.split(".", 2)
    prefix = REFERENCE_EXIT_PREFIXES[2][int(k)]
    qkv = MSREF_QKV.match(rest)
    if qkv:
        block, leaf = qkv.groups()
        part = (shape[0] // 3,) + tuple(shape[1:])
        return tuple(Piece(f"{prefix}layers.{block}.attn.to_{c}.{leaf}", part) for c in "qkv")
    for pattern, repl in MSREF_RENAMES:
        if re.match(pattern, rest):
            rest = re.sub(pattern, repl, rest, count=1)
            break
    if layernorm:
        stem, leaf = rest.rsplit(".", 1)
        rest = f"{stem}.{MINDSPORE_LAYERNORM_RENAMES[leaf]}"
    if rest.startswith("stem.") and rest.endswith(".weight"):  # Conv2d (D, C, p, p) -> Dense (D, C*p*p)
        shape = (shape[0], int(np.prod(shape[1:])))
    return (Piece(prefix + rest, tuple(shape)),)


def layout(cfg: DVTConfig, naming: Naming) -> dict[str, tuple[Piece, ...]]:
    """canonical name -> the tensor(s) that hold it under `naming`, for every parameter of `cfg` (ordered)."""
    return dict(_layout(cfg, naming))


@functools.lru_cache(maxsize=512)
def _specs(cfg: DVTConfig) -> tuple:
    return tuple(parameter_specs(cfg))


@functools.lru_cache(maxsize=512)  # configs are frozen; model inference asks for every registered one
def _layout(cfg: DVTConfig, naming: Naming) -> tuple:
    if naming == "msref":
        check_msref(cfg)
    out: dict[str, tuple[Piece, ...]] = {}
    for spec in _specs(cfg):
        shape = tuple(spec.shape)
        if naming in ("canonical", "torch"):
            out[spec.name] = (Piece(spec.name, shape),)
        elif naming == "mindspore":
            out[spec.name] = (Piece(_canonical_to_mindspore(spec.name, spec.layernorm), shape),)
        elif naming == "reference":
            out[spec.name] = (Piece(_canonical_to_reference(spec.name, cfg.num_exits), shape),)
        elif naming == "msref":
            out[spec.name] = _msref_pieces(spec.name, shape, spec.layernorm)
        else:
            raise NamingError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    return tuple(out.items())


def expected_shapes(cfg: DVTConfig, naming: Naming) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint of `cfg` under `naming` holds -> its shape (ordered)."""
    return {p.name: p.shape for pieces in layout(cfg, naming).values() for p in pieces}


def aliases(cfg: DVTConfig, naming: Naming) -> dict[str, str]:
    """Other spellings of some names under `naming` (read, never written): alias -> name."""
    if naming != "msref":
        return {}
    check_msref(cfg)
    return {prefix + alias: prefix + name for prefix in REFERENCE_EXIT_PREFIXES[2]
            for alias, name in MSREF_ALIASES.items()}


def resolve_aliases(tensors: dict, cfg: DVTConfig, naming: Naming) -> dict:
    """Rename aliases to their names (an alias whose name is also present is left, to be reported)."""
    table = aliases(cfg, naming)
    if not table or not any(k in table for k in tensors):
        return tensors
    return {table[k] if k in table and table[k] not in tensors else k: v for k, v in tensors.items()}


def name_map(cfg: DVTConfig, naming: Naming) -> dict[str, str]:
    """canonical name -> name under `naming`, for namings that only rename (not msref; see `layout`)."""
    out = {}
    for canon, pieces in layout(cfg, naming).items():
        if len(pieces) != 1:
            raise NamingError(f"the {naming} naming holds {canon} in {len(pieces)} tensors; use common.naming.layout")
        out[canon] = pieces[0].name
    return out


def _default_to_numpy(value) -> np.ndarray:
    return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)


def _is_plain(src: tuple[Piece, ...], dst: tuple[Piece, ...]) -> bool:
    return len(src) == 1 and len(dst) == 1 and src[0].shape == dst[0].shape


def rename(tensors: dict, cfg: DVTConfig, src: Naming, dst: Naming,
           to_numpy: Callable[[object], np.ndarray] | None = None) -> dict:
    """Rename (and, where the layouts differ, reshape / split / stack) a flat name->tensor dict.

    Plain renames pass the values through untouched (torch stays torch); re-laid-out parameters come
    back as numpy arrays (`to_numpy` converts a source value; default: `asnumpy()` or `np.asarray`).
    Names the config does not have, and pieces that are missing or mis-shaped, are kept under their
    source name so that validation can report them; nothing is dropped silently.
    """
    to_numpy = to_numpy or _default_to_numpy
    tensors = resolve_aliases(tensors, cfg, src)
    src_layout, dst_layout = layout(cfg, src), layout(cfg, dst)
    out, used = {}, set()
    for canon, pieces in src_layout.items():
        if not all(p.name in tensors for p in pieces):
            continue
        target = dst_layout[canon]
        if _is_plain(pieces, target):
            out[target[0].name] = tensors[pieces[0].name]
        else:
            if any(tuple(tensors[p.name].shape) != p.shape for p in pieces):
                continue  # mis-shaped: left under its own name for the report
            flat = np.concatenate([np.ascontiguousarray(to_numpy(tensors[p.name])).reshape(-1) for p in pieces])
            offset = 0
            for piece in target:
                out[piece.name] = flat[offset:offset + piece.numel].reshape(piece.shape)
                offset += piece.numel
        used.update(p.name for p in pieces)
    for name, value in tensors.items():
        if name not in used:
            out[name] = value
    return out


def detect_naming(names, cfg: DVTConfig) -> Naming | None:
    """The naming under which `names` best covers the config's parameters (None if no overlap)."""
    names = set(names)
    best, best_hits = None, 0
    for naming in FILE_NAMINGS:
        try:
            expected = set(expected_shapes(cfg, naming)) | set(aliases(cfg, naming))
        except NamingError:
            continue
        hits = len(names & expected)
        if hits > best_hits:
            best, best_hits = naming, hits
    return best
