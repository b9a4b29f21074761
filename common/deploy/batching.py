"""Fixed batch sizes on the host: which graph runs which rows, and the padding that fills a graph.

Compilers for static shapes (TensorRT profiles, MindSpore Lite on Ascend) build a graph per batch size. The
rows still active at an exit are cut into chunks: while more rows remain than the largest size, a chunk of
the largest size; the rest goes to the smallest size that holds it, padded with zero rows. Pad rows are
dropped from the outputs. They cannot change a real row: every operation of a DVT exit acts on each row
alone (no batch statistics in eval mode), which the tests check by filling the pad rows with NaN and
getting the real rows' outputs bit for bit.
"""
from __future__ import annotations

import numpy as np


def batch_plan(n: int, sizes: tuple[int, ...] | None) -> list[tuple[int, int, int | None]]:
    """[(start, stop, graph batch size), ...] covering rows 0..n-1; size None: one dynamic-batch call."""
    if n == 0:
        return []
    if sizes is None:
        return [(0, n, None)]
    largest = sizes[-1]
    plan, start = [], 0
    while n - start > largest:
        plan.append((start, start + largest, largest))
        start += largest
    rest = n - start
    plan.append((start, n, next(s for s in sizes if s >= rest)))
    return plan


def padded_rows(n: int, sizes: tuple[int, ...] | None) -> int:
    """How many pad rows the plan for n rows adds."""
    return sum((size or (stop - start)) - (stop - start) for start, stop, size in batch_plan(n, sizes))


def take_padded(a: np.ndarray, start: int, stop: int, size: int | None, fill: float = 0.0) -> np.ndarray:
    """Rows start..stop-1 of `a` as a C-contiguous array of `size` rows (the rest `fill`)."""
    rows = stop - start
    if size is None or size == rows:
        return np.ascontiguousarray(a[start:stop])
    out = np.empty((size,) + a.shape[1:], dtype=a.dtype)
    out[:rows] = a[start:stop]
    out[rows:] = fill
    return out
