"""The one table that maps parameter names between namings.

- canonical: our PyTorch module paths, `exits.{k}.…` (see `param_spec`).
- mindspore: our MindSpore cells. Identical paths, except that `nn.LayerNorm` names its affine
  parameters `gamma`/`beta` where torch says `weight`/`bias`.
- reference: the public DVT PyTorch checkpoints (DESIGN.md §2): exits are the attributes
  `less_less_token` / `less_token` / `normal_token`, and the feature-reuse MLP is spelled
  `feature_resuse_mlp` (sic). A single-exit model has no prefix, which is also the layout of the
  original T2T-ViT / DeiT checkpoints.

Every rename lives in the constants below; `name_map` applies them to a config's parameters.
"""
from __future__ import annotations

from typing import Literal

from .config import DVTConfig
from .param_spec import parameter_specs

Naming = Literal["canonical", "torch", "mindspore", "reference"]
NAMINGS = ("canonical", "torch", "mindspore", "reference")

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


class NamingError(KeyError):
    pass


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


def name_map(cfg: DVTConfig, naming: Naming) -> dict[str, str]:
    """canonical name -> name under `naming`, for every parameter of `cfg` (ordered)."""
    out: dict[str, str] = {}
    for spec in parameter_specs(cfg):
        if naming in ("canonical", "torch"):
            out[spec.name] = spec.name
        elif naming == "mindspore":
            out[spec.name] = _canonical_to_mindspore(spec.name, spec.layernorm)
        elif naming == "reference":
            out[spec.name] = _canonical_to_reference(spec.name, cfg.num_exits)
        else:
            raise NamingError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    return out


def rename(tensors: dict, cfg: DVTConfig, src: Naming, dst: Naming) -> dict:
    """Rename a flat name->tensor dict from one naming to another.

    Names that the config does not have are kept under their source name so that validation can
    report them as unexpected; nothing is dropped silently.
    """
    src_to_canon = {v: k for k, v in name_map(cfg, src).items()}
    canon_to_dst = name_map(cfg, dst)
    out = {}
    for name, value in tensors.items():
        canon = src_to_canon.get(name)
        out[canon_to_dst[canon] if canon is not None else name] = value
    return out


def detect_naming(names, cfg: DVTConfig) -> Naming | None:
    """The naming under which `names` best covers the config's parameters (None if no overlap)."""
    names = set(names)
    best, best_hits = None, 0
    for naming in ("canonical", "mindspore", "reference"):
        try:
            hits = len(names & set(name_map(cfg, naming).values()))
        except NamingError:
            continue
        if hits > best_hits:
            best, best_hits = naming, hits
    return best
