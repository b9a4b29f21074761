"""Building models by name: `create_model(name, checkpoint_path=None, **config_overrides) -> DVT`."""
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


def create_model(name: str, checkpoint_path=None, *, use_ema: bool = False, **overrides) -> DVT:
    """The registered config `name` (fields overridden by `overrides`), optionally loaded strictly.

    `.ckpt` and `.safetensors` in canonical, MindSpore or reference naming are accepted; a checkpoint
    that does not fit raises `CheckpointMismatchError` before anything is loaded. With a checkpoint the
    random initialisation is skipped (every value comes from the file). Returned in eval mode.
    """
    cfg = get_config(name, **overrides)
    if checkpoint_path is None:
        model = DVT(cfg)
    else:
        from ..checkpoint import load_checkpoint  # late import: checkpoint -> models
        with skip_init():
            model = DVT(cfg)
        load_checkpoint(model, checkpoint_path, use_ema=use_ema)
    model.set_train(False)
    return model
