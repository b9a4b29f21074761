"""Fixed batch sizes on the host: which graph runs which rows, and the padding that fills a graph.

Compilers for static shapes (TensorRT profiles, MindSpore Lite on Ascend) build a graph per batch size. The
rows still active at an exit are cut into chunks, by one of two policies:

- "pad" (default): while more rows remain than the largest size, a chunk of the largest size; the rest goes
  to the smallest size that holds it, padded with zero rows. Fewest graph calls; what accelerators with
  flat per-call cost at small batches want.
- "fit": the chunks of least cost, counting a pad row as one unit and each graph call as CALL_COST units
  (exact, by dynamic programming over the row count): 10 rows with sizes 1,8,16 run as 8 + 1 + 1, 7 rows as
  one padded 8. What CPUs, whose cost grows with the rows, want; `tools/benchmark.py --framework
  onnxruntime` measures both policies against a dynamic batch.

Pad rows are dropped from the outputs. They cannot change a real row: every operation of a DVT exit acts on
each row alone (no batch statistics in eval mode), which the tests check by filling the pad rows with NaN
and getting the real rows' outputs bit for bit.
"""
from __future__ import annotations

import numpy as np


POLICIES = ("pad", "fit")
CALL_COST = 1.0  # "fit": one graph call costs as much as this many pad rows


def batch_plan(n: int, sizes: tuple[int, ...] | None, policy: str = "pad") -> list[tuple[int, int, int | None]]:
    """[(start, stop, graph batch size), ...] covering rows 0..n-1; size None: one dynamic-batch call."""
    if n == 0:
        return []
    if sizes is None:
        return [(0, n, None)]
    if policy == "fit":
        return _fit_plan(n, sizes)
    if policy != "pad":
        raise ValueError(f"unknown batching policy {policy!r}; expected one of {POLICIES}")
    largest = sizes[-1]
    plan, start = [], 0
    while n - start > largest:
        plan.append((start, start + largest, largest))
        start += largest
    rest = n - start
    plan.append((start, n, next(s for s in sizes if s >= rest)))
    return plan


def _fit_plan(n: int, sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Chunks of least (pad rows + CALL_COST x calls, then calls): best[m] for m rows is best[m - r] plus one
    graph of size s holding r = min(s, m) rows."""
    best = [(0.0, 0)] + [None] * n
    choice = [0] * (n + 1)
    for m in range(1, n + 1):
        for s in sizes:
            r = min(s, m)
            cost, calls = best[m - r]
            cand = (cost + (s - r) + CALL_COST, calls + 1)
            if best[m] is None or cand < best[m]:
                best[m], choice[m] = cand, s
    chunks, m = [], n
    while m:
        chunks.append(choice[m])
        m -= min(choice[m], m)
    plan, start = [], 0
    for s in sorted(chunks, reverse=True):  # full chunks first, the padded one (if any) last
        stop = min(start + s, n)
        plan.append((start, stop, s))
        start = stop
    return plan


def padded_rows(n: int, sizes: tuple[int, ...] | None, policy: str = "pad") -> int:
    """How many pad rows the plan for n rows adds."""
    return sum((size or (stop - start)) - (stop - start) for start, stop, size in batch_plan(n, sizes, policy))


def take_padded(a: np.ndarray, start: int, stop: int, size: int | None, fill: float = 0.0) -> np.ndarray:
    """Rows start..stop-1 of `a` as a C-contiguous array of `size` rows (the rest `fill`)."""
    rows = stop - start
    if size is None or size == rows:
        return np.ascontiguousarray(a[start:stop])
    out = np.empty((size,) + a.shape[1:], dtype=a.dtype)
    out[:rows] = a[start:stop]
    out[rows:] = fill
    return out
