"""The resume file of a training run (`last_state.pth`): everything needed to continue bit for bit.

Holds the model, optimizer, LR scheduler, GradScaler and EMA states, the number of completed epochs,
the RNG states of python, numpy and torch (CPU and CUDA) of every rank, and the run's arguments.
Written atomically (`common.atomic`) after every epoch, read with `torch.load(weights_only=True)`:
numpy RNG states are stored as tensors so that nothing beyond tensors and plain containers is pickled.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_write
from common.readers import BadFileError
from torch_impl.checkpoint import read_checkpoint

STATE_FORMAT = "dvt-torch-train-state"
STATE_VERSION = 1
EXPECTED = "a training state (last_state.pth) written by torch_impl/train.py"


def capture_rng() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path, *, model, optimizer, scheduler, scaler, ema, epoch: int, num_updates: int,
                     rng: list[dict], args: dict) -> Path:
    """Write the state after `epoch` completed epochs; `rng` holds one `capture_rng()` per rank."""
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": epoch, "num_updates": num_updates,
             "model_name": model.config.name, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
             "ema": ema.state_dict() if ema is not None else None, "rng": rng, "args": args}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_train_state(path) -> dict:
    """Read a state written by `save_train_state`; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    try:
        state = read_checkpoint(path)  # weights_only: tensors, containers, numpy values
    except BadFileError as err:
        raise BadFileError(path, EXPECTED, err.problem) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise BadFileError(path, EXPECTED, "it is not a training state (a weights file? start from weights with "
                                           "--initial-checkpoint instead)")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise BadFileError(path, EXPECTED, f"its version {state['version']} is newer than this code ({STATE_VERSION})")
    return state
