"""Checks a data set passes before any training or evaluation starts, the same for both frameworks.

- `check_labels`: every label of a split is a class index in [0, num_classes). (A label of 99 would crash
  inside the loss after minutes of work; MindSpore would silently train a label of -1 as the last class.)
- `check_image_files`: the header of every image file reads (format and size, `common.readers.
  check_image_header`), in parallel threads with a progress bar, so a corrupt file anywhere, `val/` included,
  fails in seconds naming the file, instead of after every training epoch has run. Header reads are mostly
  I/O (the GIL is released while waiting on the disk or a network file system), so threads scale where it
  matters; the decode errors a header cannot reveal (a truncated JPEG body) are still reported by the
  loaders, naming the file.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from common.readers import BadFileError, check_image_header

CHUNK = 256  # files per task: keeps the pool's overhead per file small
SHOWN = 5  # bad files named in the message


class BadDataError(ValueError):
    """A data set that fails a check; the message names the split and the files or samples."""


def check_labels(labels, num_classes: int, where: str) -> None:
    """BadDataError unless every label is an integer class index in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    if labels.dtype.kind not in "iu":
        raise BadDataError(f"{where}: labels must be integer class indices, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        idx = np.flatnonzero(bad)
        examples = ", ".join(f"sample {i} has label {int(labels[i])}" for i in idx[:SHOWN])
        raise BadDataError(f"{where}: {idx.size} label(s) outside [0, {num_classes}) ({examples}); "
                           f"expected class indices of a {num_classes}-class data set")


def _check_chunk(paths: Sequence[str]) -> list[str]:
    bad = []
    for path in paths:
        try:
            check_image_header(path)
        except (BadFileError, OSError) as err:
            bad.append(str(err))
    return bad


def check_image_files(paths: Sequence[str], where: str, *, threads: int = 16, show_progress: bool = True,
                      rank: int = 0, world_size: int = 1,
                      combine: Callable[[list[str]], list[str]] | None = None) -> float:
    """BadDataError naming the first files whose header does not read; returns the seconds it took.

    Distributed: each of `world_size` processes checks every `world_size`-th file and `combine` merges the
    lists of problems of all processes (an all-gather), so every process fails alike.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    mine = list(paths[rank::world_size]) if world_size > 1 else list(paths)
    chunks = [mine[i:i + CHUNK] for i in range(0, len(mine), CHUNK)]
    bad: list[str] = []
    bar = tqdm(total=len(mine), desc=f"checking {where} images", unit="file", leave=False, file=sys.stderr,
               disable=not (show_progress and sys.stderr.isatty()))
    with ThreadPoolExecutor(max(1, min(threads, len(chunks) or 1))) as pool:
        for chunk, problems in zip(chunks, pool.map(_check_chunk, chunks)):
            bad += problems
            bar.update(len(chunk))
    bar.close()
    if combine is not None:
        bad = combine(bad)
    seconds = time.perf_counter() - start
    if bad:
        more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
        raise BadDataError(f"{len(bad)} unreadable image file(s) in {where}{more}:\n  " + "\n  ".join(bad[:SHOWN]))
    if show_progress:
        print(f"checked the headers of {len(paths):,} image files of {where} in {seconds:.1f} s", flush=True)
    return seconds


def default_threads() -> int:
    return min(32, 4 * (os.cpu_count() or 1))
