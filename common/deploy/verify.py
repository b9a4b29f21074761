"""The export-time check both exporters run: each graph's outputs against the eager stage it came from.

As timm's ONNX export does, a graph is run right after it is written and compared with the model it was
traced from; a graph that disagrees is never handed to a user (the export fails, nothing is left behind).
"""
from __future__ import annotations

import numpy as np

from common.config import DVTConfig

from .manifest import DeployError
from .signature import stage_outputs


def compare_outputs(cfg: DVTConfig, record: dict, rows: int, got: list, expected: list, tolerance: float) -> dict:
    """{"exit", "batch_size", "rows", "max_abs_diff": {output name: float}}; DeployError past the tolerance
    (`tolerance` x max(1, max |expected|), per output)."""
    k = record["exit"]
    names = [s.name for s in stage_outputs(cfg, k)]
    if len(got) != len(names):
        raise DeployError(f"{record['file']}: {len(got)} outputs, expected {len(names)} ({names})")
    diffs = {}
    for name, g, e in zip(names, got, expected):
        g = np.asarray(g)
        if g.shape != e.shape:
            raise DeployError(f"{record['file']}: output {name} has shape {g.shape}, the eager stage {e.shape}")
        diffs[name] = float(np.abs(g.astype(np.float64) - e).max()) if e.size else 0.0
        scale = max(1.0, float(np.abs(e).max()) if e.size else 0.0)
        if not diffs[name] <= tolerance * scale:  # NaN fails too
            raise DeployError(f"{record['file']}: output {name} differs from the eager model by {diffs[name]:.3g} "
                              f"(allowed {tolerance * scale:.3g}); the exported graph is wrong, nothing written")
    return {"exit": k, "batch_size": record["batch_size"], "rows": rows, "max_abs_diff": diffs}
