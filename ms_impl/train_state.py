"""The resume file of a MindSpore training run (`last_state.ckpt`): everything needed to continue.

One MindSpore checkpoint holding, by prefix: `model.*` (all weights, frozen ones included), `optimizer.*`
(AdamW's exp_avg / exp_avg_sq), `ema.*` (EMA weights, when on), `amp.*` (loss scale and its counter, under
AMP), plus one JSON string `meta`: format, version, completed epochs, number of updates, AdamW's step
count, model name, the run's arguments and the RNG scheme.

RNG: every random stream of ms_impl/train.py is re-derived at the start of each epoch from (seed, epoch,
rank): the data order and transforms (ms_impl/data.py), mixup/cutmix (a numpy Generator) and
`mindspore.set_seed`. Resuming at epoch e therefore replays epoch e exactly, except for dropout inside the
compiled graph (--drop, --drop-path, and the T2T Performer token layers' --token-drop, 0.1 in the reference
models), whose kernels keep a random state of their own that MindSpore neither exposes nor lets one reset (and
its CPU backend has no stateless dropout kernel); runs with any dropout resume statistically, not bit for bit,
and ms_impl/train.py says so when it resumes one. Without dropout (the digits recipe) a resumed run ends with
exactly the tensors of an uninterrupted one (tests/test_ms_train_processes.py kills one with SIGKILL).
Written atomically and durably (`common.atomic`) after every epoch, by rank 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor

from common.atomic import atomic_path
from common.readers import BadFileError
from ms_impl.checkpoint import read_ckpt

STATE_FORMAT = "dvt-mindspore-train-state"
STATE_VERSION = 1
EXPECTED = "a training state (last_state.ckpt) written by ms_impl/train.py"
RNG_SCHEME = "per-epoch seeds: (seed, epoch, rank)"


def _entries(prefix: str, named) -> list[dict]:
    return [{"name": f"{prefix}.{name}", "data": Tensor(p.asnumpy())} for name, p in named]


def save_train_state(path, *, model, optimizer, ema=None, loss_scaler=None, epoch: int, num_updates: int,
                     opt_step: int, args: dict, seed: int) -> Path:
    """Write the state after `epoch` completed epochs (see the module docstring for the layout)."""
    entries = _entries("model", model.parameters_and_names())
    entries += _entries("optimizer", [(p.name, p) for p in optimizer.state_parameters()])
    if ema is not None:
        entries += _entries("ema", ema.module.parameters_and_names())
    if loss_scaler is not None:
        entries += _entries("amp", [("scale_value", loss_scaler.scale_value), ("counter", loss_scaler.counter)])
    meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": int(epoch), "num_updates": int(num_updates),
            "opt_step": int(opt_step), "model_name": model.config.name, "ema": ema is not None,
            "amp": loss_scaler is not None, "rng": {"scheme": RNG_SCHEME, "seed": int(seed)}, "args": args}
    path = Path(path)
    with atomic_path(path, ".ckpt") as tmp:  # MindSpore appends .ckpt to names without it
        ms.save_checkpoint(entries, str(tmp), append_dict={"meta": json.dumps(meta)})
    return path


def load_train_state(path) -> dict:
    """{'meta': dict, 'model' / 'optimizer' / 'ema' / 'amp': name -> numpy}; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    raw = read_ckpt(path, EXPECTED)
    meta = raw.get("meta")
    try:
        meta = json.loads(meta) if isinstance(meta, str) else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise BadFileError(path, EXPECTED, "it is not a training state (a weights file? start from weights with "
                                           "--initial-checkpoint instead)")
    if int(meta.get("version", 0)) > STATE_VERSION:
        raise BadFileError(path, EXPECTED, f"its version {meta['version']} is newer than this code ({STATE_VERSION})")
    state = {"meta": meta, "model": {}, "optimizer": {}, "ema": {}, "amp": {}}
    for name, value in raw.items():
        prefix, _, rest = name.partition(".")
        if prefix in state and prefix != "meta":
            state[prefix][rest] = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
    return state


def assign(params: dict, values: dict, what: str) -> None:
    """Copy `values` (name -> numpy) into `params` (name -> Parameter); every name must match, shapes too."""
    missing, extra = sorted(set(params) - set(values)), sorted(set(values) - set(params))
    bad = [n for n in params if n in values and tuple(values[n].shape) != tuple(params[n].shape)]
    if missing or extra or bad:
        raise ValueError(f"the saved {what} does not fit: missing {missing[:5]}, unexpected {extra[:5]}, "
                         f"mis-shaped {bad[:5]}")
    for name, p in params.items():
        p.set_data(Tensor(np.ascontiguousarray(values[name]), p.dtype))
