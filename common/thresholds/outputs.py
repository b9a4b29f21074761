"""Stored per-exit outputs: the `.npz` layout that both frameworks' evaluation scripts write.

Threshold solvers never touch a model: they read what every exit predicted on a data split. One
file holds one model on one split (format "dvt-exit-outputs", version 1):

    key             dtype    shape       meaning
    logits          float32  (K, N, C)   pre-softmax logits of every exit, in exit order (exit 0 is
                                         the coarsest token grid); logits rather than probabilities
                                         so that any exit criterion can be computed from them
    labels          int64    (N,)        ground-truth class of each sample, in [0, C)
    gflops          float64  (K,)        cumulative GFLOPs per image to reach each exit
                                         (`common.cumulative_gflops(cfg)`), positive and increasing
    sample_ids      int64    (N,)        index of each sample in its data set (0..N-1 by default),
                                         so that calibration/test indices can be traced back
    model           str      ()          model name (registry name, or free text)
    split           str      ()          which data the samples come from ("val", "heldout", ...)
    format          str      ()          "dvt-exit-outputs"
    format_version  int64    ()          1

Written uncompressed with `np.savez` through a temporary file and `os.replace` (a reader never sees a
half-written file), read with `allow_pickle=False`. Both `save_exit_outputs` and `load_exit_outputs`
validate shapes, dtypes and finiteness and raise `ExitOutputsError` (a ValueError) naming the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import atomic_write
from common.readers import BadFileError, read_npz

FORMAT = "dvt-exit-outputs"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("logits", "labels", "gflops")
_CHUNK = 1 << 22  # elements per finiteness check, to bound temporary memory


class ExitOutputsError(ValueError):
    """Per-exit outputs that cannot be used (wrong shapes, NaN, labels out of range, ...)."""


@dataclass(frozen=True, eq=False)
class ExitOutputs:
    """What every exit of a cascade predicted on one data split."""

    logits: np.ndarray  # (K, N, C) float32
    labels: np.ndarray  # (N,) int64
    gflops: np.ndarray  # (K,) float64, cumulative
    model: str = ""
    split: str = ""
    sample_ids: np.ndarray | None = None  # (N,) int64; None -> arange(N)

    def __post_init__(self) -> None:
        logits, labels, gflops = validate_exit_outputs(self.logits, self.labels, self.gflops, where=self._where())
        ids = np.arange(labels.shape[0], dtype=np.int64) if self.sample_ids is None else \
            _validate_ids(self.sample_ids, labels.shape[0], self._where())
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "gflops", gflops)
        object.__setattr__(self, "sample_ids", ids)
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "split", str(self.split))

    def _where(self) -> str:
        parts = [p for p in (self.model, self.split) if p]
        return "exit outputs" + (f" ({', '.join(parts)})" if parts else "")

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    @property
    def num_samples(self) -> int:
        return self.logits.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[2]

    def subset(self, indices, split: str | None = None) -> "ExitOutputs":
        """The samples at `indices` (an index array or boolean mask), e.g. a calibration split."""
        idx = np.asarray(indices)
        return ExitOutputs(self.logits[:, idx], self.labels[idx], self.gflops, self.model,
                           self.split if split is None else split, self.sample_ids[idx])


def validate_exit_outputs(logits, labels, gflops, where: str = "exit outputs"):
    """Check and normalise dtypes; returns (logits float32 (K,N,C), labels int64 (N,), gflops float64 (K,))."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ExitOutputsError(
            f"{where}: logits must have shape (exits K, samples N, classes C), got shape {logits.shape}")
    k, n, c = logits.shape
    if k < 1 or n < 1:
        raise ExitOutputsError(f"{where}: logits of shape {logits.shape} hold no samples or no exits")
    if c < 2:
        raise ExitOutputsError(f"{where}: logits need at least 2 classes, got C={c}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ExitOutputsError(f"{where}: logits must be floating point, got dtype {logits.dtype}")
    logits = logits.astype(np.float32, copy=False)
    flat = logits.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        block = flat[start:start + _CHUNK]
        if not np.isfinite(block).all():
            first = start + int(np.flatnonzero(~np.isfinite(block))[0])
            ek, rest = divmod(first, n * c)
            raise ExitOutputsError(
                f"{where}: logits contain NaN or infinity (first at exit {ek}, sample {rest // c}, "
                f"class {rest % c})")

    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ExitOutputsError(
            f"{where}: labels must have shape (N,) = ({n},) to match logits {logits.shape}, got {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or np.any(labels != np.round(labels)):
            raise ExitOutputsError(f"{where}: labels must be integer class indices (found NaN or fractions)")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ExitOutputsError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= c)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ExitOutputsError(
            f"{where}: {int(bad.sum())} label(s) outside [0, {c}) (e.g. sample {i} has label {labels[i]})")

    gflops = validate_gflops(gflops, k, where)
    return logits, labels, gflops


def validate_gflops(gflops, num_exits: int, where: str = "gflops") -> np.ndarray:
    """Cumulative GFLOPs per exit: shape (K,), finite, positive, strictly increasing."""
    try:
        g = np.array(gflops, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ExitOutputsError(f"{where}: gflops must be numbers, got {gflops!r}") from e
    if g.shape != (num_exits,):
        raise ExitOutputsError(
            f"{where}: gflops must hold one cumulative cost per exit, shape ({num_exits},), got {g.shape}")
    if not np.isfinite(g).all() or (g <= 0).any():
        raise ExitOutputsError(f"{where}: gflops must be finite and positive, got {g.tolist()}")
    if (np.diff(g) <= 0).any():
        raise ExitOutputsError(
            f"{where}: gflops must be cumulative (strictly increasing exit by exit), got {g.tolist()}")
    return g


def _validate_ids(ids, n: int, where: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ExitOutputsError(f"{where}: sample_ids must be an integer array of shape ({n},), "
                               f"got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def save_exit_outputs(path: str | os.PathLike, logits, labels, gflops, *, model: str = "", split: str = "",
                      sample_ids=None) -> Path:
    """Validate and write per-exit outputs to `path` (.npz, layout in the module docstring), atomically."""
    out = ExitOutputs(np.asarray(logits), np.asarray(labels), np.asarray(gflops), model, split,
                      None if sample_ids is None else np.asarray(sample_ids))
    return write_exit_outputs(path, out)


def write_exit_outputs(path: str | os.PathLike, outputs: ExitOutputs) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise ExitOutputsError(f"exit outputs are written as .npz, got path {path}")
    arrays = dict(logits=outputs.logits, labels=outputs.labels, gflops=outputs.gflops,
                  sample_ids=outputs.sample_ids, model=np.array(outputs.model), split=np.array(outputs.split),
                  format=np.array(FORMAT), format_version=np.array(FORMAT_VERSION, dtype=np.int64))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


class ExitOutputsFileError(ExitOutputsError, BadFileError):
    """A per-exit outputs file that does not read or does not hold valid outputs."""


EXPECTED = "per-exit outputs (.npz with logits (K,N,C), labels (N,), gflops (K,), as common.thresholds.outputs writes)"


def load_exit_outputs(path: str | os.PathLike) -> ExitOutputs:
    """Read and validate a file written by `save_exit_outputs` (`common.readers.read_npz`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exit-outputs file at {path}")
    try:
        data = read_npz(path, EXPECTED)
    except BadFileError as e:
        raise ExitOutputsFileError(path, EXPECTED, e.problem) from None
    keys = set(data)
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing:
        raise ExitOutputsFileError(path, EXPECTED, f"missing array(s) {missing}; found {sorted(keys)}")
    if "format" in keys and str(data["format"]) != FORMAT:
        raise ExitOutputsFileError(path, EXPECTED, f"format is {str(data['format'])!r}, expected {FORMAT!r}")
    if "format_version" in keys and int(data["format_version"]) > FORMAT_VERSION:
        raise ExitOutputsFileError(path, EXPECTED, f"format version {int(data['format_version'])} is newer than "
                                                   f"this code understands ({FORMAT_VERSION})")
    text = {k: str(data[k]) if k in keys else "" for k in ("model", "split")}
    try:
        return ExitOutputs(data["logits"], data["labels"], data["gflops"], text["model"], text["split"],
                           data.get("sample_ids"))
    except ExitOutputsError as e:
        raise ExitOutputsFileError(path, EXPECTED, str(e)) from None
