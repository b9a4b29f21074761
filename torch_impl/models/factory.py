"""Building models by name, and registering every config in timm's model registry.

    create_model("dvt_t2t_vit_12", checkpoint_path=None, **config_overrides) -> DVT
    timm.create_model("dvt_t2t_vit_12", checkpoint_path=..., num_classes=10)

Every name in `common.list_models()` gets a generated timm entry point with a pretrained cfg (mean,
std, crop, interpolation, input size, classes from the config; no URL: weights are local files) and
`checkpoint_filter_fn`, so timm's own loaders (`checkpoint_path=`, `pretrained=True` with
`pretrained_cfg_overlay=dict(file=...)`) accept the reference checkpoints too; with `pretrained=True`
timm re-initialises heads of another `num_classes`, and the filter adapts the first layer of every
exit to `in_chans` (`common.input_channels`). timm's builder arguments are accepted: any config field
(`num_classes`, `in_chans`, `img_size`, `drop_path_rate`, ...), `global_pool`, `device`, `dtype`, and
`features_only=True` (timm's FeatureGetterNet over the last exit's blocks, `out_indices` default 3: the
last three blocks); an unknown argument raises TypeError as for any timm model. A name that timm already knows
from another module is an error, not a silent overwrite.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import timm.models
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from common.config import DVTConfig
from common.input_channels import first_layer
from common.registry import get_config, list_models

from ..checkpoint import canonical_state_dict, load_checkpoint
from .dvt import DVT

PAPER = "Not All Images are Worth 16x16 Words: Dynamic Transformers for Efficient Image Recognition"


def checkpoint_filter_fn(state_dict, model: DVT) -> dict:
    """timm filter: any container / wrapper prefix / naming -> canonical names (via common.naming), with
    each exit's first layer adapted to the model's `in_chans` (a no-op when the channel counts match)."""
    from ..transfer import adapt_first_layers  # late import: transfer -> checkpoint -> models
    tensors, _, _ = canonical_state_dict(state_dict, model.config)
    return adapt_first_layers(tensors, model.config)


def pretrained_cfg(cfg: DVTConfig) -> dict:
    """timm pretrained cfg of a config (no weights source: DVT checkpoints are local files)."""
    heads = tuple(f"exits.{k}.head" for k in range(cfg.num_exits))
    convs = tuple(first_layer(cfg, k)[0] for k in range(cfg.num_exits))  # first Conv2d / Linear of each exit
    if cfg.num_exits == 1:  # a single-exit backbone names its layers as any timm model does
        heads, convs = heads[0], convs[0]
    return dict(
        num_classes=cfg.num_classes, input_size=(cfg.in_chans, cfg.img_size, cfg.img_size),
        fixed_input_size=True, pool_size=None, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
        mean=tuple(cfg.mean), std=tuple(cfg.std), first_conv=convs, classifier=heads, license="apache-2.0",
        paper_name=PAPER, paper_ids="arXiv:2105.15075",
        origin_url="https://github.com/blackfeather-wang/Dynamic-Vision-Transformer",
        description=cfg.description or None)


def create_model(name: str, checkpoint_path=None, *, use_ema: bool = False, global_pool: str = "token",
                 **overrides) -> DVT:
    """The registered config `name` (fields overridden by `overrides`), optionally loaded strictly."""
    cfg = get_config(name, **overrides)
    model = DVT(cfg, global_pool=global_pool)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(cfg)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, use_ema=use_ema)
    return model


# ---- timm registry -------------------------------------------------------------------------------
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(DVTConfig)) - {"name", "exits"}


def _dvt_from_kwargs(name: str, img_size=None, global_pool: str | None = None, device=None, dtype=None,
                     **overrides) -> DVT:
    """Model class for timm's builder: timm passes img_size as (H, W) for fixed-size models; anything that is
    not a config field, `global_pool`, `device` or `dtype` is a TypeError, as for timm's own models."""
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword argument(s) {unknown}; it takes config fields "
                        f"({', '.join(sorted(_CONFIG_FIELDS))}), global_pool, device and dtype")
    if isinstance(img_size, (tuple, list)):
        if len(img_size) != 2 or img_size[0] != img_size[1]:
            raise ValueError(f"{name}: DVT needs square inputs, got img_size={tuple(img_size)}")
        img_size = img_size[0]
    if img_size is not None:
        overrides["img_size"] = int(img_size)
    return DVT(get_config(name, **overrides), global_pool=global_pool or "token", device=device, dtype=dtype)


def _create(name: str, pretrained: bool = False, **kwargs) -> DVT:
    depth = kwargs.get("depth", get_config(name).depth)
    out_indices = kwargs.pop("out_indices", min(3, depth))  # timm's ViT default: the last three blocks
    return build_model_with_cfg(partial(_dvt_from_kwargs, name), name, pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs) -> DVT:
        return _create(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"DVT model {name!r} (config in common.registry)."
    return entrypoint


default_cfgs = generate_default_cfgs({name: pretrained_cfg(get_config(name)) for name in list_models()})


def register_timm_models() -> list[str]:
    """Register every config in timm (idempotent); raise if timm has the name from elsewhere."""
    clashes = [n for n in list_models()
               if timm.models.is_model(n) and timm.models.model_entrypoint(n).__module__ != __name__]
    if clashes:
        raise RuntimeError(f"DVT model names already registered in timm by other modules: {clashes}")
    names = []
    for name in list_models():
        if not timm.models.is_model(name):
            register_model(_entrypoint(name))
        names.append(name)
    return names


register_timm_models()
