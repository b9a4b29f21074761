"""Reading, validating and writing PyTorch-side checkpoints.

Formats: `.pth` / `.pt` / `.pth.tar` / `.bin` (torch.load, weights_only), `.safetensors`, and for loading
MindSpore `.ckpt` files (ours or the official MindSpore port's; read with MindSpore, imported only then).
Containers (`model_state_dict` of the released DVT files, `state_dict` / `state_dict_ema` of the
training script, timm/DeiT `model`, bare dicts, `module.` prefixes) are unwrapped by
`common.checkpoints`, names in the canonical, reference or MindSpore layout are mapped through the
one table in `common.naming`, and a checkpoint that does not fit raises `CheckpointMismatchError`
listing missing, unexpected and mis-shaped keys before anything is copied (never a partial load).

    info = load_checkpoint(model, "dvt_t2t_vit_12.pth")       # strict; returns LoadInfo
    save_checkpoint(model, "out/model.safetensors")           # canonical names, atomic write
"""
from __future__ import annotations

import importlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_path, atomic_write
from common.checkpoints import (CheckpointMismatchError, MismatchReport, check_against_config,
                                extract_state_dict, resolve_naming)
from common.config import DVTConfig
from common.naming import Naming, rename
from common.readers import ST_EXPECTED, BadFileError, check_safetensors, require_file

TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
CKPT_SUFFIX = ".ckpt"  # MindSpore checkpoints (ours, or the official MindSpore port's): read with MindSpore

__all__ = ["LoadInfo", "read_checkpoint", "canonical_state_dict", "load_checkpoint", "save_checkpoint",
           "named_state_dict", "CheckpointMismatchError"]


@dataclass
class LoadInfo:
    """What `load_checkpoint` found: where the weights sat, their naming, and what was set aside."""

    container: str  # key that held the weights ('' for a bare state dict)
    naming: str  # 'canonical' | 'reference' | 'mindspore'
    report: MismatchReport
    dropped: dict = field(default_factory=dict)  # bookkeeping entries skipped (reason -> count)
    extras: dict = field(default_factory=dict)  # non-tensor entries (e.g. the reference's `flops`)


def _suffix_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if name.endswith(TORCH_SUFFIXES):
        return "torch"
    if name.endswith(CKPT_SUFFIX):
        return "ckpt"
    raise ValueError(f"{path}: unsupported checkpoint format; expected one of "
                     f"{TORCH_SUFFIXES + (SAFETENSORS_SUFFIX, CKPT_SUFFIX)}")


def _read_ckpt(path: Path) -> dict:
    """A MindSpore `.ckpt` as name -> numpy (bfloat16 as float32) plus its string entries.

    The format is MindSpore's own protobuf, so MindSpore reads it; without MindSpore installed the error
    says how to convert the file to `.safetensors` elsewhere."""
    try:
        import mindspore as ms
    except ImportError as err:
        raise ValueError(f"{path}: reading a MindSpore .ckpt needs MindSpore; convert it to .safetensors with "
                         "tools/convert_weights.py where MindSpore is installed") from err
    expected = "a MindSpore checkpoint (.ckpt, as mindspore.save_checkpoint writes)"
    require_file(path, expected)
    try:
        raw = ms.load_checkpoint(str(path))
    except Exception as err:  # MindSpore raises ValueError / RuntimeError with its own wording
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise BadFileError(path, expected, f"it does not load ({type(err).__name__}: {first})") from None
    out = {}
    for name, value in raw.items():
        if isinstance(value, ms.Tensor):
            value = (value.astype(ms.float32) if value.dtype == ms.bfloat16 else value).asnumpy()
        out[name] = value
    return out


TORCH_EXPECTED = "a PyTorch checkpoint (a torch.save archive or pickle)"


class UntrustedPickleError(BadFileError):
    """A torch pickle that needs more than tensors, containers and numpy values to load (weights_only refused)."""


def _numpy_globals(path: Path, names: list[str]) -> list | None:
    """The numpy globals a pickle needs (reference containers store numpy extras such as `flops`),
    or None if it needs anything else. numpy's dtype classes are not listed by torch's scan, so all
    of them are allowed along with the names it reports."""
    if not names or not all(n.startswith("numpy.") for n in names):
        return None
    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        out.append((getattr(importlib.import_module(module), attr), name))
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        out += [cls for cls in vars(dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    return out


def _load_weights_only(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a torch.save file at all
            raise err from None
        allowed = _numpy_globals(path, names)
        if allowed is None:
            if not names:
                raise
            raise UntrustedPickleError(
                path, TORCH_EXPECTED + " holding tensors, python containers and numpy values only",
                f"its pickle needs {names}; if you trust this file, load it with weights_only=False") from None
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path, weights_only: bool = True):
    """Load the raw checkpoint object on CPU; a file that does not load raises `BadFileError` naming it.

    With `weights_only` (default) pickles may hold tensors, python containers and numpy values
    only; pass `weights_only=False` for a trusted file that needs more.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    kind = _suffix_kind(path)
    if kind == "safetensors":
        check_safetensors(path)
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError is no ValueError
            raise BadFileError(path, ST_EXPECTED, f"it does not load ({type(err).__name__}: {err})") from None
    if kind == "ckpt":
        return _read_ckpt(path)
    require_file(path, TORCH_EXPECTED)
    try:
        if not weights_only:
            return torch.load(path, map_location="cpu", weights_only=False)
        return _load_weights_only(path)
    except BadFileError:
        raise
    except Exception as err:  # EOFError, RuntimeError (zip), UnpicklingError, MemoryError, ...
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise BadFileError(path, TORCH_EXPECTED, f"it does not load ({type(err).__name__}: {first})") from None


def _to_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def canonical_state_dict(obj, cfg: DVTConfig, *, use_ema: bool = False, naming: Naming | None = None):
    """A loaded checkpoint object -> (canonical name -> tensor, naming found, Extracted)."""
    extracted = extract_state_dict(obj, use_ema=use_ema)
    naming = resolve_naming(extracted.tensors.keys(), cfg, naming)
    renamed = rename(extracted.tensors, cfg, naming, "canonical", to_numpy=tensor_to_numpy)
    tensors = {k: _to_tensor(v) for k, v in renamed.items()}
    return tensors, naming, extracted


def validate(tensors: dict, cfg: DVTConfig, naming: Naming, context: str) -> MismatchReport:
    """Raise CheckpointMismatchError unless `tensors` (named under `naming`, as in the file, so the
    report speaks the file's names) hold exactly `cfg`'s parameters."""
    report = check_against_config({k: tuple(v.shape) for k, v in tensors.items()}, cfg, naming)
    if not report.ok:
        raise CheckpointMismatchError(report, context)
    return report


def load_checkpoint(model, path, *, use_ema: bool = False, naming: Naming | None = None,
                    strict: bool = True, weights_only: bool = True) -> LoadInfo:
    """Load a checkpoint file into a `DVT` model.

    strict=True: every parameter must be present with its shape and nothing else may be there,
    checked before copying. strict=False loads the tensors that fit and reports the rest.
    """
    cfg = model.config
    tensors, naming, extracted = canonical_state_dict(read_checkpoint(path, weights_only), cfg,
                                                      use_ema=use_ema, naming=naming)
    context = f"model {cfg.name!r} (file {path}, {naming} names)"
    if strict:
        report = validate(extracted.tensors, cfg, naming, context)
    else:  # load what fits; the report (in canonical names) says what did not
        report = check_against_config({k: tuple(v.shape) for k, v in tensors.items()}, cfg, "canonical")
        bad = set(report.unexpected) | {name for name, _, _ in report.mis_shaped}
        tensors = {k: v for k, v in tensors.items() if k not in bad}
    with torch.no_grad():
        torch.nn.Module.load_state_dict(model, tensors, strict=strict)  # already validated and renamed
    return LoadInfo(extracted.container, naming, report, extracted.dropped, extracted.extras)


def named_state_dict(model, naming: Naming = "canonical") -> dict:
    """The model's parameters (detached, CPU, contiguous) under `naming`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {k: _to_tensor(v) for k, v in rename(tensors, model.config, "canonical", naming,
                                                 to_numpy=tensor_to_numpy).items()}


def save_checkpoint(model, path, *, naming: Naming = "canonical", extras: dict | None = None) -> Path:
    """Write the weights (and the config) atomically and durably (`common.atomic`).

    `.safetensors` stores the config as JSON metadata; torch formats write
    `{'state_dict': ..., 'config': ..., 'naming': ..., **extras}`.
    """
    path = Path(path)
    kind = _suffix_kind(path)
    if kind == "ckpt":
        raise ValueError(f"{path}: unsupported checkpoint format for writing: torch_impl writes .pth / "
                         ".safetensors (make a MindSpore .ckpt from them with tools/convert_weights.py)")
    tensors = named_state_dict(model, naming)
    config = model.config.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "safetensors":
        from safetensors.torch import save_file
        meta = {"format": "pt", "naming": naming, "config": json.dumps(config)}
        meta.update({k: json.dumps(v) for k, v in (extras or {}).items()})
        with atomic_path(path, SAFETENSORS_SUFFIX) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    else:
        state = {"state_dict": tensors, "config": config, "naming": naming, **(extras or {})}
        atomic_write(path, lambda f: torch.save(state, f))
    return path


# ---- used by tools/convert_weights.py (numpy in, file out) ------------------------------------------
def tensor_to_numpy(value) -> np.ndarray:
    """A checkpoint tensor -> numpy on CPU; bfloat16 (which numpy lacks) becomes float32, exactly."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def save_state_dict(tensors: dict, path, *, config: dict, naming: Naming = "canonical", dtype: str = "fp32",
                    extras: dict | None = None) -> Path:
    """Write name -> numpy array as a torch container, atomically (temp file + rename).

    Canonical names go under `state_dict` (what `create_model(name, checkpoint_path=...)` loads), reference
    names under `model_state_dict` (the released DVT files' container); `config` and `naming` go beside
    them. `dtype` ('fp32' | 'fp16' | 'bf16') applies to floating tensors.
    """
    target = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    state = {}
    for name, value in tensors.items():
        t = torch.from_numpy(np.ascontiguousarray(value))
        state[name] = t.to(target) if t.is_floating_point() else t
    key = "model_state_dict" if naming == "reference" else "state_dict"
    path = Path(path)
    container = {key: state, "config": config, "naming": naming, **(extras or {})}
    atomic_write(path, lambda f: torch.save(container, f))
    return path
