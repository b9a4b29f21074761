"""Named model configurations: the single source of truth for every model both frameworks build.

Reference cascades follow the public DVT code exactly (DESIGN.md §2). New here: DVT cascades over
T2T-ViT-7/10/19/24 and the token-transformer T2T variants, two-exit 7->14 cascades (the paper's
speed table), single-exit backbones at every grid, and tiny configs for tests and the demo.
"""
from __future__ import annotations

import difflib
from typing import Callable

from .config import (ConfigError, DVTConfig, ExitConfig, PatchTokenizerConfig, SoftSplit,
                     T2TTokenizerConfig)

_REGISTRY: dict[str, Callable[[], DVTConfig]] = {}

# ---- tokenizer geometry at 224x224 (DESIGN.md §2) ---------------------------------------------
_T2T_FIRST_SPLIT_224 = {7: SoftSplit(14, 8, 3), 10: SoftSplit(11, 6, 5), 14: SoftSplit(7, 4, 2)}
_DEIT_PATCH_224 = {7: PatchTokenizerConfig(32, 32, 0), 10: PatchTokenizerConfig(23, 23, 3),
                   14: PatchTokenizerConfig(16, 16, 0)}
_T2T_LATER_SPLITS = (SoftSplit(3, 2, 1), SoftSplit(3, 2, 1))

# name -> (dim, depth, heads, mlp_ratio) of the T2T-ViT family
_T2T_SIZES = {7: (256, 7, 4, 2.0), 10: (256, 10, 4, 2.0), 12: (256, 12, 4, 2.0),
              14: (384, 14, 6, 3.0), 19: (448, 19, 7, 3.0), 24: (512, 24, 8, 3.0)}
_REFERENCE_GRIDS = (7, 10, 14)


def register(name: str):
    def wrap(fn: Callable[[], DVTConfig]) -> Callable[[], DVTConfig]:
        if name in _REGISTRY:
            raise ValueError(f"model config {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_models(pattern: str | None = None, tiny: bool | None = None) -> list[str]:
    """Registered names, sorted; `pattern` is a substring filter, `tiny` filters by size class."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if pattern in n]
    if tiny is not None:
        names = [n for n in names if is_tiny(n) == tiny]
    return names


def is_tiny(name: str) -> bool:
    return "tiny" in name


REFERENCE_MODELS = ("dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small")


def get_config(name: str, **overrides) -> DVTConfig:
    """The config registered under `name`, optionally with fields overridden (and re-validated)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}{hint} ({len(_REGISTRY)} registered; see common.list_models())")
    cfg = _REGISTRY[name]()
    return cfg.replace(**overrides) if overrides else cfg


# ---- builders ----------------------------------------------------------------------------------
def _t2t_exits(grids, img_size=224, token_layer="performer", first_splits=None, later=_T2T_LATER_SPLITS,
               token_dim=64):
    first_splits = first_splits or _T2T_FIRST_SPLIT_224
    return tuple(
        ExitConfig(g, T2TTokenizerConfig(splits=(first_splits[g],) + tuple(later), token_layer=token_layer,
                                         token_dim=token_dim))
        for g in grids)


def _t2t(name, size, grids=_REFERENCE_GRIDS, token_layer="performer", feature_reuse=True,
         relation_reuse=True, description=""):
    dim, depth, heads, mlp = _T2T_SIZES[size]
    reuse = len(grids) > 1
    return DVTConfig(
        name=name, family="t2t", dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp,
        exits=_t2t_exits(grids, token_layer=token_layer), qkv_bias=False, norm_eps=1e-5,
        pos_embed="sinusoid", feature_reuse=feature_reuse and reuse,
        relation_reuse=relation_reuse and reuse, description=description)


def _deit_small(name, grids=_REFERENCE_GRIDS, feature_reuse=True, relation_reuse=True, description=""):
    reuse = len(grids) > 1
    return DVTConfig(
        name=name, family="deit", dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
        exits=tuple(ExitConfig(g, _DEIT_PATCH_224[g]) for g in grids), qkv_bias=True, norm_eps=1e-6,
        pos_embed="learned", feature_reuse=feature_reuse and reuse,
        relation_reuse=relation_reuse and reuse, description=description)


_ABLATIONS = {"no_reuse": (False, False), "feature_reuse": (True, False), "relation_reuse": (False, True)}


def _register_reference_family(prefix: str, build, ablations: tuple[str, ...]):
    """The cascade, its reuse ablations and its two-exit 7->14 variant."""
    register(f"dvt_{prefix}")(lambda: build(f"dvt_{prefix}", description="reference DVT (DESIGN.md §2)"))
    for ablation in ablations:
        feat, rel = _ABLATIONS[ablation]
        register(f"dvt_{prefix}_{ablation}")(
            lambda a=ablation, f=feat, r=rel: build(f"dvt_{prefix}_{a}", feature_reuse=f, relation_reuse=r,
                                                    description=f"reuse ablation: {a}"))
    register(f"dvt_{prefix}_2exit")(
        lambda: build(f"dvt_{prefix}_2exit", grids=(7, 14), description="two exits, 7x7 -> 14x14"))


_register_reference_family("t2t_vit_12", lambda n, **kw: _t2t(n, 12, **kw),
                           ("no_reuse", "feature_reuse", "relation_reuse"))
_register_reference_family("t2t_vit_14", lambda n, **kw: _t2t(n, 14, **kw),
                           ("no_reuse", "feature_reuse", "relation_reuse"))
_register_reference_family("deit_small", _deit_small, ("no_reuse", "feature_reuse", "relation_reuse"))

for _size in (7, 10, 19, 24):  # DVT cascades the reference does not ship
    register(f"dvt_t2t_vit_{_size}")(
        lambda s=_size: _t2t(f"dvt_t2t_vit_{s}", s, description="DVT cascade over T2T-ViT (new)"))

# Single-exit backbones: the static models DVT is compared against, at every grid.
for _size in _T2T_SIZES:
    register(f"t2t_vit_{_size}")(lambda s=_size: _t2t(f"t2t_vit_{s}", s, grids=(14,), description="single T2T-ViT"))
for _size in (12, 14):
    for _g in (7, 10):
        register(f"t2t_vit_{_size}_grid{_g}")(
            lambda s=_size, g=_g: _t2t(f"t2t_vit_{s}_grid{g}", s, grids=(g,), description=f"single, {g}x{g} tokens"))
for _size in (14, 19, 24):
    register(f"t2t_vit_t_{_size}")(
        lambda s=_size: _t2t(f"t2t_vit_t_{s}", s, grids=(14,), token_layer="transformer",
                             description="single T2T-ViT, transformer token layers"))
register("deit_small")(lambda: _deit_small("deit_small", grids=(14,), description="single DeiT-small"))
for _g in (7, 10):
    register(f"deit_small_grid{_g}")(
        lambda g=_g: _deit_small(f"deit_small_grid{g}", grids=(g,), description=f"single, {g}x{g} tokens"))


# ---- the official MindSpore port (DESIGN.md §3): 2-exit DeiT-small, 7x7 -> 14x14, its four reuse variants -----
# Its math where it differs from the PyTorch reference: tanh GELU, LayerNorm eps 1e-7 (MindSpore defaults), plain
# nearest x2 resampling, the context MLP's LayerNorm computed and discarded, stop-gradient on the reused
# features; 1001 classes (index 1000 unused), dropout 0.1, no drop path; eval: resize 256, centre crop 224,
# bilinear. Its parameter layout (separate to_q/to_k/to_v, patch embedding as reshape + Dense) is the same math
# as ours and is converted by `common.naming` ("msref" naming), not rebuilt.
_MSREF_EXITS = (ExitConfig(7, _DEIT_PATCH_224[7]), ExitConfig(14, _DEIT_PATCH_224[14]))
_MSREF_VARIANTS = {"": (True, True), "_feature_reuse": (True, False), "_relation_reuse": (False, True),
                   "_no_reuse": (False, False)}


def _deit_small_msref(name, feature_reuse=True, relation_reuse=True, description=""):
    return DVTConfig(
        name=name, family="deit", dim=384, depth=12, num_heads=6, mlp_ratio=4.0, exits=_MSREF_EXITS,
        qkv_bias=True, norm_eps=1e-7, gelu="tanh", pos_embed="learned", num_classes=1001,
        feature_reuse=feature_reuse, relation_reuse=relation_reuse, reuse_resample="nearest",
        feature_reuse_norm="discarded", detach_reused_features=True, drop_rate=0.1, drop_path_rate=0.0,
        crop_pct=0.875, interpolation="bilinear", description=description)


for _suffix, (_f, _r) in _MSREF_VARIANTS.items():
    register(f"dvt_deit_small_msref{_suffix}")(
        lambda n=f"dvt_deit_small_msref{_suffix}", f=_f, r=_r: _deit_small_msref(
            n, feature_reuse=f, relation_reuse=r, description="the official MindSpore port's DVT (DESIGN.md §3)"))


# ---- tiny configs (tests, parity, the digits demo): 32x32 images, 10 classes ---------------------
_TINY_IMG = 32
_TINY_T2T_FIRST = {2: SoftSplit(14, 4, 3), 3: SoftSplit(11, 3, 4), 4: SoftSplit(7, 2, 2)}
_TINY_PATCH = {2: PatchTokenizerConfig(16, 16, 0), 3: PatchTokenizerConfig(11, 11, 1),
               4: PatchTokenizerConfig(8, 8, 0), 6: PatchTokenizerConfig(5, 5, 1)}
_TINY_COMMON = dict(img_size=_TINY_IMG, num_classes=10, context_hidden=32, context_dim=16,
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, interpolation="bilinear",
                    drop_path_rate=0.0)


def _tiny_t2t(name, grids=(2, 3, 4), token_layer="performer", feature_reuse=True, relation_reuse=True,
              dim=64, depth=2, heads=4, description="tiny T2T DVT for tests"):
    return DVTConfig(
        name=name, family="t2t", dim=dim, depth=depth, num_heads=heads, mlp_ratio=2.0,
        exits=_t2t_exits(grids, img_size=_TINY_IMG, token_layer=token_layer, first_splits=_TINY_T2T_FIRST,
                         token_dim=16),
        qkv_bias=False, norm_eps=1e-5, pos_embed="sinusoid", feature_reuse=feature_reuse,
        relation_reuse=relation_reuse, description=description, **_TINY_COMMON)


def _tiny_deit(name, grids=(2, 3, 4), feature_reuse=True, relation_reuse=True, description="tiny DeiT DVT"):
    return DVTConfig(
        name=name, family="deit", dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
        exits=tuple(ExitConfig(g, _TINY_PATCH[g]) for g in grids), qkv_bias=True, norm_eps=1e-6,
        pos_embed="learned", feature_reuse=feature_reuse, relation_reuse=relation_reuse,
        description=description, **_TINY_COMMON)


register("dvt_tiny_t2t")(lambda: _tiny_t2t("dvt_tiny_t2t"))
register("dvt_tiny_t2t_transformer")(
    lambda: _tiny_t2t("dvt_tiny_t2t_transformer", token_layer="transformer",
                      description="tiny T2T DVT with transformer token layers"))
for _ab, (_f, _r) in _ABLATIONS.items():
    register(f"dvt_tiny_t2t_{_ab}")(
        lambda a=_ab, f=_f, r=_r: _tiny_t2t(f"dvt_tiny_t2t_{a}", feature_reuse=f, relation_reuse=r,
                                            description=f"tiny reuse ablation: {a}"))
register("dvt_tiny_deit")(lambda: _tiny_deit("dvt_tiny_deit"))
register("dvt_tiny_deit_2exit")(lambda: _tiny_deit("dvt_tiny_deit_2exit", grids=(2, 4),
                                                   description="tiny two-exit DeiT DVT"))
register("dvt_tiny_deit_4exit")(lambda: _tiny_deit("dvt_tiny_deit_4exit", grids=(2, 3, 4, 6),
                                                   description="tiny four-exit DeiT DVT (general cascade)"))
# The MindSpore port's cascade at reduced width and depth (its own code builds it so: parity/golden/msref); the
# port's blocks hard-code 224x224 images, so this tiny config keeps them, and its 1001 classes.
register("dvt_tiny_msref")(lambda: _deit_small_msref("dvt_tiny_msref", description="tiny MindSpore-port DVT").replace(
    dim=16, depth=2, num_heads=2, mlp_ratio=2.0))
register("t2t_vit_tiny")(lambda: _tiny_t2t("t2t_vit_tiny", grids=(4,), feature_reuse=False, relation_reuse=False,
                                           description="tiny single T2T-ViT"))
# The default model of the digits demo: a little deeper so that every exit learns in ~2 minutes.
register("dvt_tiny_digits")(lambda: _tiny_t2t("dvt_tiny_digits", depth=4, dim=64, heads=4,
                                              description="default model of the embedded digits demo"))


