"""Building models by name, with MindCV's arguments: `create_model(model_name, num_classes=None, pretrained=False,
in_channels=None, checkpoint_path=None, ema=False, **config_overrides) -> DVT`."""
from __future__ import annotations

import contextlib

from common.registry import get_config

from .dvt import DVT


def skip_init():
    """Context in which parameters built from initializers stay unmaterialised (MindSpore's
    `no_init_parameters`): building a model to load a checkpoint into, or to list its parameters, then
    takes milliseconds instead of seconds. Falls back to normal initialisation where the API is gone."""
    try:
        from mindspore.nn.utils import no_init_parameters
    except ImportError:  # deprecated in MindSpore 2.9 docs; still present in 2.10
        return contextlib.nullcontext()
    return no_init_parameters()


def create_model(model_name: str, num_classes: int | None = None, pretrained: bool = False,
                 in_channels: int | None = None, checkpoint_path=None, ema: bool = False, *,
                 use_ema: bool | None = None, global_pool: str = "token", **overrides) -> DVT:
    """MindCV's `create_model`: the registered config `model_name`, fields overridden by `overrides`.

    `num_classes` / `in_channels` (MindCV's names) override the config's classes and input channels.
    - `checkpoint_path` alone: the file is loaded strictly (every parameter with its shape, nothing else),
      as MindCV's `checkpoint_path`; `.ckpt` and `.safetensors` in canonical, MindSpore or reference naming.
      A checkpoint that does not fit raises `CheckpointMismatchError` before anything is loaded, and the
      random initialisation is skipped (every value comes from the file).
    - `pretrained=True`: no DVT weights are hosted, so the file at `checkpoint_path` plays MindCV's
      pretrained weights: heads of another `num_classes` start fresh and every exit's first layer is
      adapted to `in_channels` (MindCV's `load_pretrained`; `ms_impl.transfer.load_for_transfer`).
    `ema` / `use_ema`: take the EMA weights of a training checkpoint. Returned in eval mode.
    """
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if in_channels is not None:
        overrides["in_chans"] = in_channels
    use_ema = ema if use_ema is None else use_ema
    if pretrained and checkpoint_path is None:
        raise ValueError(f"{model_name}: no pretrained DVT weights are hosted; pass checkpoint_path= with the "
                         "released (or converted) weights to start from them")
    cfg = get_config(model_name, **overrides)
    if checkpoint_path is None or pretrained:
        model = DVT(cfg, global_pool)
        if pretrained:
            from ..transfer import load_for_transfer  # late import: transfer -> checkpoint -> models
            load_for_transfer(model, checkpoint_path, use_ema=use_ema)
    else:
        from ..checkpoint import load_checkpoint  # late import: checkpoint -> models
        with skip_init():
            model = DVT(cfg, global_pool)
        load_checkpoint(model, checkpoint_path, use_ema=use_ema)
    model.set_train(False)
    return model
