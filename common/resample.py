"""Token-grid resampling shared by both frameworks as plain numpy constants.

The reference resizes an s x s token map to t x t by nearest upsampling to 2s x 2s followed by
adaptive average pooling to t x t (DESIGN.md §2). Both steps are linear and act on each spatial
axis separately, so the whole operation is `out = A @ X @ A.T` with one fixed (t, s) matrix A.
Building A here once means torch and MindSpore multiply by bit-identical constants.

The MindSpore port resizes by plain nearest interpolation instead (`mode="nearest"`, source index
floor(j * s / t), MindSpore's `ResizeNearestNeighbor` and torch's `nearest`): at t = 2s both modes give
the same 0/1 matrix, so the products are exact copies; they differ for other t and in FLOPs.
"""
from __future__ import annotations

import math

import numpy as np

from .config import ConfigError, max_reuse_ratio

RESAMPLE_MODES = ("nearest_avgpool", "nearest")


def resample_matrix(src: int, dst: int, dtype=np.float32, mode: str = "nearest_avgpool") -> np.ndarray:
    """The (dst, src) matrix of nearest-x2 upsampling followed by adaptive average pooling.

    Pooling bin j of the 2s-long upsampled axis spans [floor(j*2s/t), ceil((j+1)*2s/t)) (torch's
    adaptive pooling rule); upsampled index u reads source index u // 2 (nearest, scale 1/2).
    `mode="nearest"`: row j reads source index floor(j * s / t) alone.
    """
    if mode not in RESAMPLE_MODES:
        raise ConfigError(f"resample mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    if not (isinstance(src, int) and isinstance(dst, int)) or src < 1:
        raise ConfigError(f"resample_matrix needs positive integer grid sizes, got {src!r} -> {dst!r}")
    if not src <= dst <= max_reuse_ratio() * src:
        raise ConfigError(
            f"cannot resample a {src}x{src} token grid to {dst}x{dst}: need s <= t <= 2s")
    mat = np.zeros((dst, src), dtype=np.float64)
    if mode == "nearest":
        mat[np.arange(dst), (np.arange(dst) * src) // dst] = 1.0
        return mat.astype(dtype)
    up = 2 * src
    for j in range(dst):
        start = (j * up) // dst
        end = math.ceil((j + 1) * up / dst)
        for u in range(start, end):
            mat[j, u // 2] += 1.0 / (end - start)
    return mat.astype(dtype)


def resample_grid_np(x: np.ndarray, src: int, dst: int, mode: str = "nearest_avgpool") -> np.ndarray:
    """Reference numpy application on (..., s, s) maps; used by tests and as documentation."""
    a = resample_matrix(src, dst, np.float64, mode)
    return np.einsum("ts,...sr,ur->...tu", a, x.astype(np.float64), a)


def resample_flops(src: int, dst: int, mode: str = "nearest_avgpool") -> int:
    """FLOPs of resampling one s x s map, counted as fvcore counts the reference ops.

    fvcore charges `upsample_nearest2d` one per output element and `adaptive_avg_pool2d` one per
    input element: (2s)^2 + (2s)^2. The matrix form computes the same numbers (A has at most two
    non-zeros per row), so it is charged the same. `mode="nearest"` (the port's single resize): t^2.
    """
    if mode == "nearest":
        return dst * dst
    up = 2 * src
    return 2 * up * up
