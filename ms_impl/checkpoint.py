"""Reading, validating and writing MindSpore-side checkpoints (`.ckpt`, `.safetensors`).

Containers and optimizer state (`adam_m.*`, `adam_v.*`, `global_step`, `learning_rate`, ...) are
handled by `common.checkpoints`, names in the canonical, MindSpore or reference layout are mapped
through the one table in `common.naming`, and a checkpoint that does not fit raises
`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys before anything is copied
(never a partial load). The lists `load_param_into_net` returns are checked as well.

    info = load_checkpoint(model, "dvt.ckpt")                  # strict; returns LoadInfo
    save_checkpoint(model, "out/model.safetensors")           # canonical names, atomic write
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor

from common.atomic import atomic_path
from common.checkpoints import (CheckpointMismatchError, MismatchReport, check_against_config,
                                extract_state_dict, resolve_naming)
from common.config import DVTConfig
from common.naming import Naming, rename
from common.readers import BadFileError, read_safetensors, require_file

CKPT_SUFFIX = ".ckpt"
SAFETENSORS_SUFFIX = ".safetensors"

__all__ = ["LoadInfo", "read_checkpoint", "load_checkpoint", "save_checkpoint", "named_parameters",
           "CheckpointMismatchError"]


@dataclass
class LoadInfo:
    """What `load_checkpoint` found: where the weights sat, their naming, and what was set aside."""

    container: str  # key that held the weights ('' for a flat file)
    naming: str  # 'canonical' | 'reference' | 'mindspore'
    report: MismatchReport
    dropped: dict = field(default_factory=dict)  # bookkeeping entries skipped (reason -> count)
    extras: dict = field(default_factory=dict)  # non-tensor entries (e.g. the saved config)


def _suffix_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if name.endswith(CKPT_SUFFIX):
        return "ckpt"
    raise ValueError(f"{path}: unsupported checkpoint format; ms_impl reads and writes "
                     f"{CKPT_SUFFIX}, {SAFETENSORS_SUFFIX} (convert torch files to .safetensors first)")


CKPT_EXPECTED = "a MindSpore checkpoint (.ckpt, as mindspore.save_checkpoint writes)"


def read_ckpt(path, expected: str = CKPT_EXPECTED) -> dict:
    """name -> Parameter (plus saved strings) of a `.ckpt` file; `BadFileError` naming it if it does not load."""
    path = require_file(path, expected)
    try:
        raw = dict(ms.load_checkpoint(str(path)))
    except Exception as err:  # MindSpore raises ValueError / RuntimeError with its own wording
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise BadFileError(path, expected, f"it does not load ({type(err).__name__}: {first})") from None
    if not raw:
        raise BadFileError(path, expected, "it holds no entries")
    return raw


def read_checkpoint(path) -> dict:
    """The flat dict of a file: `.ckpt` -> name -> Parameter (plus saved strings), `.safetensors` -> numpy."""
    path = Path(path)
    kind = _suffix_kind(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if kind == "ckpt":
        return read_ckpt(path)
    return read_safetensors(path)[0]


def _model_config(model) -> DVTConfig:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, DVTConfig):
        raise TypeError(f"expected an ms_impl DVT model (with .config), got {type(model).__name__}")
    return cfg


def load_checkpoint(model, path, *, use_ema: bool = False, naming: Naming | None = None,
                    strict: bool = True) -> LoadInfo:
    """Load a checkpoint file into a `DVT` cell; values are cast to the dtype of its parameters.

    strict=True: every parameter must be present with its shape and nothing else may be there,
    checked before copying. strict=False loads the tensors that fit and reports the rest.
    """
    cfg = _model_config(model)
    extracted = extract_state_dict(read_checkpoint(path), use_ema=use_ema)
    tensors = extracted.tensors
    naming = resolve_naming(tensors.keys(), cfg, naming)
    context = f"model {cfg.name!r} (file {path}, {naming} names)"
    report = check_against_config({k: tuple(v.shape) for k, v in tensors.items()}, cfg, naming)
    if strict and not report.ok:
        raise CheckpointMismatchError(report, context)
    bad = set(report.unexpected) | {name for name, _, _ in report.mis_shaped}
    tensors = rename({k: v for k, v in tensors.items() if k not in bad}, cfg, naming, "mindspore",
                     to_numpy=parameter_to_numpy)
    params = dict(model.parameters_and_names())
    if not strict:  # pieces of a re-laid-out parameter that was not complete stay behind (reported)
        tensors = {k: v for k, v in tensors.items() if k in params}
    to_load = {}
    for name, value in tensors.items():
        target = params[name]
        tensor = value if isinstance(value, Tensor) else Tensor(np.ascontiguousarray(value))
        to_load[name] = Parameter(tensor.astype(target.dtype), name=name, requires_grad=target.requires_grad)
    not_loaded, unused = ms.load_param_into_net(model, to_load, strict_load=True)
    if unused or (strict and not_loaded):  # the cell and the config disagree: never ignore it
        raise CheckpointMismatchError(MismatchReport(missing=list(not_loaded), unexpected=sorted(unused)),
                                      f"{context}, after load_param_into_net")
    return LoadInfo(extracted.container, naming, report, extracted.dropped, extracted.extras)


def named_parameters(model, naming: Naming = "canonical") -> dict:
    """The model's parameters as numpy arrays under `naming`."""
    tensors = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    return rename(tensors, _model_config(model), "mindspore", naming)


def save_checkpoint(model, path, *, naming: Naming | None = None, extras: dict | None = None) -> Path:
    """Write all parameters (frozen ones included) and the config atomically and durably (`common.atomic`),
    so a crash never leaves a truncated checkpoint.

    Default naming: 'mindspore' for `.ckpt` (what MindSpore's own tools expect), 'canonical' for
    `.safetensors` (the framework-neutral file torch_impl loads as is). The config (JSON) and `extras`
    go into the safetensors metadata or, for `.ckpt`, into string entries beside the weights.
    """
    path = Path(path)
    kind = _suffix_kind(path)
    naming = naming or ("mindspore" if kind == "ckpt" else "canonical")
    tensors = named_parameters(model, naming)
    meta = {"naming": naming, "config": json.dumps(_model_config(model).to_dict())}
    meta.update({k: json.dumps(v) for k, v in (extras or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, SAFETENSORS_SUFFIX if kind == "safetensors" else CKPT_SUFFIX) as tmp:
        # MindSpore appends .ckpt to names without it, so the temporary name keeps the suffix.
        if kind == "safetensors":
            from safetensors.numpy import save_file
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                      metadata={"format": "np", **meta})
        else:
            ms.save_checkpoint([{"name": k, "data": Tensor(v)} for k, v in tensors.items()], str(tmp),
                               append_dict=meta)
    return path


# ---- used by tools/convert_weights.py (numpy in, file out) ------------------------------------------
def parameter_to_numpy(value) -> np.ndarray:
    """A `.ckpt` entry (Parameter/Tensor) -> numpy; bfloat16 becomes float32, exactly."""
    if isinstance(value, Tensor):
        if value.dtype == ms.bfloat16:
            value = value.astype(ms.float32)
        return value.asnumpy()
    return np.asarray(value)


def save_state_dict(tensors: dict, path, *, metadata: dict, dtype: str = "fp32") -> Path:
    """Write name -> numpy array as a MindSpore `.ckpt`, atomically; `metadata` (str -> str, e.g. the
    config JSON and the naming) goes into string entries beside the weights, as `save_checkpoint` does.
    `dtype` ('fp32' | 'fp16' | 'bf16') applies to floating tensors."""
    target = {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}[dtype]
    entries = []
    for name, value in tensors.items():
        t = Tensor(np.ascontiguousarray(value))
        entries.append({"name": name, "data": t.astype(target) if value.dtype.kind == "f" else t})
    path = Path(path)
    with atomic_path(path, CKPT_SUFFIX) as tmp:  # MindSpore appends .ckpt to names without it
        ms.save_checkpoint(entries, str(tmp), append_dict=dict(metadata))
    return path
