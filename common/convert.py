"""Framework-neutral weight conversion: a loaded checkpoint object -> the tensors another format needs.

    conv = convert(obj, model="dvt_t2t_vit_12", naming="mindspore", dtype="fp32", to_numpy=...)
    conv.tensors        # target name -> numpy array, in parameter-spec order, validated

Steps, each in one place: `extract_state_dict` (containers, wrapper prefixes, optimizer state) ->
choose the config (`--model`, or inferred from the tensors and any config embedded in the file) ->
`check_against_config` in the file's own naming (every tensor consumed, none missing, every shape
right; else `CheckpointMismatchError` listing all problems) -> `common.naming.rename` -> dtype.

Framework readers and writers stay in `torch_impl.checkpoint` / `ms_impl.checkpoint`; `.safetensors`
is read and written here with numpy only (bfloat16 included, as raw 16-bit words), so converting
between `.safetensors` and one framework's format needs that framework alone.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoints import (EMA_KEYS, CheckpointMismatchError, MismatchReport, check_against_config,
                          extract_state_dict)
from .config import ConfigError, DVTConfig
from .naming import FILE_NAMINGS, NAMINGS, Naming, NamingError, detect_naming, expected_shapes, name_map, rename
from .readers import ST_DTYPES, as_float32_if_bf16, bf16_bits_to_float32, read_safetensors  # noqa: F401
from .registry import get_config, list_models

# ---- formats ---------------------------------------------------------------------------------------
FORMAT_SUFFIXES = {
    "torch": (".pth.tar", ".pth", ".pt", ".tar", ".bin"),
    "mindspore": (".ckpt",),
    "safetensors": (".safetensors",),
}
# Naming written by default into each format; `.ckpt` is always MindSpore-named (MindSpore's tools
# expect the cell's own parameter names).
DEFAULT_NAMING = {"torch": "canonical", "mindspore": "mindspore", "safetensors": "canonical"}
ALLOWED_NAMINGS = {"torch": ("canonical", "reference"), "mindspore": ("mindspore", "msref"),
                   "safetensors": ("canonical", "mindspore", "reference", "msref")}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Top-level entries of a torch training container that are not weights (dropped, counted).
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "opt", "lr_scheduler", "scheduler", "scaler",
                  "amp", "loss_scaler", "optim")


class ConversionError(ValueError):
    """A conversion that cannot be done as asked (format, naming, dtype, model choice)."""


class AmbiguousModelError(ConversionError):
    """Several registered configs fit the tensors; `--model` must choose."""

    def __init__(self, candidates: list[tuple[str, str]]):
        self.candidates = candidates
        listed = "\n".join(f"  {name} ({naming} naming)" for name, naming in candidates)
        super().__init__(f"{len(candidates)} registered models fit these tensors; pass --model NAME:\n{listed}")


def format_of(path) -> str:
    """'torch' | 'mindspore' | 'safetensors' from the file name (ConversionError otherwise)."""
    name = Path(path).name.lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)
    raise ConversionError(f"{path}: unknown checkpoint format; expected a file name ending in {known}")


def check_target(fmt: str, naming: str | None, dtype: str) -> str:
    """The naming to write (default per format); ConversionError for a combination the format lacks."""
    naming = naming or DEFAULT_NAMING[fmt]
    if naming == "torch":
        naming = "canonical"
    if naming not in ALLOWED_NAMINGS[fmt]:
        raise ConversionError(f"{fmt} files are written with {' or '.join(ALLOWED_NAMINGS[fmt])} names, "
                              f"not {naming!r}")
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return naming


# ---- bfloat16 without ml_dtypes ----------------------------------------------------------------------
def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (torch's and MindSpore's rule)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


# ---- safetensors with numpy: reading is common.readers.read_safetensors (validated, one error type) ----------
_ST_DTYPES = {k: v for k, v in ST_DTYPES.items() if k != "BF16"}


def write_safetensors(path, tensors: dict, metadata: dict, dtype: str = "fp32") -> Path:
    """Write name -> numpy (float32) array atomically, cast to `dtype`; bf16 as raw 16-bit words."""
    from .atomic import atomic_path, atomic_write
    path = Path(path)
    if dtype != "bf16":
        from safetensors.numpy import save_file
        np_dtype = np.dtype(DTYPES[dtype])
        arrays = {k: np.ascontiguousarray(v.astype(np_dtype) if v.dtype.kind == "f" else v)
                  for k, v in tensors.items()}
        with atomic_path(path, ".safetensors") as tmp:
            save_file(arrays, str(tmp), metadata=metadata)
        return path
    header, chunks, offset = {}, [], 0
    for name, value in tensors.items():
        if value.dtype.kind == "f":
            raw, st_dtype = float32_to_bf16_bits(value).astype("<u2").tobytes(), "BF16"
        else:
            st_dtype = next(k for k, v in _ST_DTYPES.items() if np.dtype(v) == value.dtype)
            raw = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data to 8 bytes

    def write(f):
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for chunk in chunks:
            f.write(chunk)
    return atomic_write(path, write)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- the conversion itself -----------------------------------------------------------------------------
@dataclass
class Conversion:
    """What `convert` produced and what it decided, for the writer and the printed summary."""

    config: DVTConfig
    src_naming: str
    dst_naming: str
    tensors: dict  # target name -> numpy array (float32 unless dtype fp16; bf16 is cast by the writer)
    dtype: str  # 'fp32' | 'fp16' | 'bf16'
    container: str  # key that held the weights ('' for a flat file)
    src_dtypes: dict  # source dtype name -> tensor count
    choice: str  # how the config was chosen, one line
    dropped: dict = field(default_factory=dict)  # reason -> count (optimizer state, bookkeeping, ...)
    set_aside: list = field(default_factory=list)  # other entries of the container, not written

    @property
    def num_parameters(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self.tensors.values()))

    def metadata(self) -> dict:
        """String metadata for safetensors / string entries for .ckpt (config JSON, naming)."""
        return {"naming": self.dst_naming, "config": json.dumps(self.config.to_dict())}


def embedded_config(obj, metadata: dict | None = None) -> DVTConfig | None:
    """The config a file carries (torch container 'config', safetensors metadata, .ckpt string entry)."""
    raw = (metadata or {}).get("config")
    if raw is None and isinstance(obj, dict):
        raw = obj.get("config")
    if raw is None:
        return None
    try:
        return DVTConfig.from_dict(json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw))
    except (ConfigError, TypeError, ValueError, KeyError):
        return None  # not ours, or from an incompatible version: infer from the tensors instead


def _count_tensors(value) -> int:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return 1
    if isinstance(value, dict):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_tensors(v) for v in value)
    return 0


def _classify_extras(extras: dict, dropped: dict) -> list[str]:
    """Count optimizer state / unused EMA weights among a container's other entries; list the rest."""
    set_aside = []
    for key, value in extras.items():
        n = _count_tensors(value)
        if key in OPTIMIZER_KEYS:
            reason = "optimizer/training state"
            dropped[reason] = dropped.get(reason, 0) + max(n, 1)
        elif key in EMA_KEYS + ("state_dict", "model_state_dict", "model") and isinstance(value, dict):
            reason = f"unused weights in {key!r}"
            dropped[reason] = dropped.get(reason, 0) + n
        elif key not in ("config", "naming"):
            set_aside.append(key)
    return set_aside


def _fits(shapes: dict, cfg: DVTConfig) -> str | None:
    """The naming under which `shapes` holds exactly cfg's parameters, or None."""
    for naming in FILE_NAMINGS:
        try:
            if check_against_config(shapes, cfg, naming).ok:
                return naming
        except NamingError:
            continue
    return None


def _closest(shapes: dict, candidates: list[DVTConfig], n: int = 3) -> list[tuple[DVTConfig, Naming, MismatchReport]]:
    scored = []
    for cfg in candidates:
        naming = detect_naming(shapes, cfg)
        if naming is None:
            continue
        report = check_against_config(shapes, cfg, naming)
        bad = len(report.missing) + len(report.unexpected) + len(report.mis_shaped)
        scored.append((bad, cfg.name, cfg, naming, report))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [(cfg, naming, report) for _, _, cfg, naming, report in scored[:n]]


def _differences(a: DVTConfig, b: DVTConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(f"{k}={da[k]!r}" for k in da if k != "description" and da[k] != db.get(k)) or "none"


def choose_config(shapes: dict, model: str | None = None, embedded: DVTConfig | None = None,
                  candidates: list[str] | None = None) -> tuple[DVTConfig, Naming, str]:
    """(config, naming of the tensors, one-line explanation).

    With `model`: the registered config, or the file's embedded config of the same name when only
    that one fits (a fine-tuned head, say). Without: the registered configs the tensors fit exactly
    (and the embedded config); one fit is chosen, several raise `AmbiguousModelError`, none raises
    `CheckpointMismatchError` against the closest config.
    """
    if model is not None:
        cfg = get_config(model)
        naming = _fits(shapes, cfg)
        if naming is None and embedded is not None and embedded.name == cfg.name and embedded != cfg:
            emb_naming = _fits(shapes, embedded)
            if emb_naming is not None:
                return embedded, emb_naming, (f"model: {model} with the config embedded in the file "
                                              f"({_differences(embedded, cfg)})")
        if naming is None:
            naming = detect_naming(shapes, cfg)
            if naming is None:
                raise CheckpointMismatchError(
                    MismatchReport(missing=list(name_map(cfg, "canonical"))[:5], unexpected=sorted(shapes)[:5]),
                    f"model {cfg.name!r} (no tensor name matches its canonical, MindSpore, reference or "
                    "MindSpore-port names)")
            raise CheckpointMismatchError(check_against_config(shapes, cfg, naming),
                                          f"model {cfg.name!r} ({naming} names)")
        return cfg, naming, f"model: {model} ({naming} naming, as given)"

    registered = [get_config(n) for n in (candidates if candidates is not None else list_models())]
    fits = [(cfg, naming) for cfg in registered if (naming := _fits(shapes, cfg)) is not None]
    if embedded is not None:
        for cfg, naming in fits:
            if cfg == embedded:
                return cfg, naming, f"inferred model: {cfg.name} ({naming} naming; the file's embedded config)"
        emb_naming = _fits(shapes, embedded)
        if emb_naming is not None:
            base = next((c for c in registered if c.name == embedded.name), None)
            diff = f", differs from the registered one in {_differences(embedded, base)}" if base else ""
            return embedded, emb_naming, (f"inferred model: {embedded.name} ({emb_naming} naming; "
                                          f"the file's embedded config{diff})")
    if len(fits) == 1:
        cfg, naming = fits[0]
        return cfg, naming, f"inferred model: {cfg.name} ({naming} naming)"
    if len(fits) > 1:
        raise AmbiguousModelError([(cfg.name, naming) for cfg, naming in fits])
    closest = _closest(shapes, registered)
    if not closest:
        raise CheckpointMismatchError(
            MismatchReport(unexpected=sorted(shapes)[:10]),
            "any registered model (no tensor name matches; is this a DVT checkpoint?)")
    cfg, naming, report = closest[0]
    others = ", ".join(c.name for c, _, _ in closest[1:])
    raise CheckpointMismatchError(
        report, f"any registered model; closest is {cfg.name!r} ({naming} names)"
                + (f", then {others}" if others else "") + "; pass --model NAME to check against another")


def file_metadata(path) -> dict:
    """The string metadata of a .safetensors file (where ours keep the config); {} for other formats."""
    if not Path(path).name.lower().endswith(".safetensors"):
        return {}
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        return dict(f.metadata() or {})


def checkpoint_config(obj, metadata: dict | None = None, model: str | None = None,
                      use_ema: bool = False) -> tuple[DVTConfig, Naming, str]:
    """The config a loaded checkpoint object holds: `choose_config` on its tensors and embedded config."""
    extracted = extract_state_dict(obj, use_ema=use_ema)
    shapes = {k: tuple(v.shape) for k, v in extracted.tensors.items()}
    return choose_config(shapes, model, embedded_config(obj, metadata))


def dtype_name(dtype) -> str:
    """'float32' for numpy float32, torch.float32 and MindSpore Float32 alike."""
    name = str(getattr(dtype, "name", None) or dtype).lower()
    return name.rsplit(".", 1)[-1]


def _default_to_numpy(value) -> np.ndarray:
    return as_float32_if_bf16(np.asarray(value))


def convert(obj, *, model: str | None = None, naming: Naming = "canonical", dtype: str = "fp32",
            use_ema: bool = False, metadata: dict | None = None,
            to_numpy: Callable[[object], np.ndarray] = _default_to_numpy,
            candidates: list[str] | None = None) -> Conversion:
    """A loaded checkpoint object (any container, any naming) -> validated tensors under `naming`.

    `to_numpy` turns one of the object's tensors into a numpy array (the framework readers pass
    theirs; bfloat16 must come back as float32). Raises `CheckpointMismatchError` (readable list of
    missing / unexpected / mis-shaped names, in the file's naming), `AmbiguousModelError` or
    `ConversionError`; on success every source tensor has been consumed.
    """
    if naming not in NAMINGS:
        raise ConversionError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    extracted = extract_state_dict(obj, use_ema=use_ema)
    dropped = dict(extracted.dropped)
    set_aside = _classify_extras(extracted.extras, dropped)
    shapes = {k: tuple(v.shape) for k, v in extracted.tensors.items()}
    cfg, src_naming, choice = choose_config(shapes, model, embedded_config(obj, metadata), candidates)
    report = check_against_config(shapes, cfg, src_naming)
    if not report.ok:
        raise CheckpointMismatchError(report, f"model {cfg.name!r} ({src_naming} names)")
    try:
        order = list(expected_shapes(cfg, naming))  # spec order: the order both frameworks hold the parameters in
    except NamingError as err:
        raise ConversionError(str(err.args[0] if err.args else err)) from err
    src_dtypes, arrays = {}, {}
    for name, raw in extracted.tensors.items():
        src_dtype = dtype_name(raw.dtype)
        src_dtypes[src_dtype] = src_dtypes.get(src_dtype, 0) + 1
        arrays[name] = to_numpy(raw)
    renamed = rename(arrays, cfg, src_naming, naming)  # validated above: every target tensor is there
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    out = {}
    for name in order:
        value = renamed[name]
        out[name] = np.ascontiguousarray(value.astype(np_dtype, copy=False) if value.dtype.kind == "f" else value)
    return Conversion(cfg, src_naming, naming, out, dtype, extracted.container, src_dtypes, choice, dropped,
                      set_aside)
