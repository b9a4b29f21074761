"""Token-grid resampling from s x s to t x t with the shared constant matrix of `common.resample`.

The reference resizes by nearest x2 upsampling then adaptive average pooling. Both are linear and
separable, so `y = (A @ X) @ A^T` with one (t, s) matrix A computed once in numpy: torch and MindSpore
multiply by the same bits, with the same op order, and any s -> t with s <= t <= 2s works. A is a
constant Tensor, not a Parameter: nothing to train, nothing in a checkpoint. `mode="nearest"` is the
MindSpore port's plain nearest resize (`common.resample`).
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

from common.resample import resample_matrix


class GridResample(nn.Cell):
    """Holds A (and A^T) for one s -> t step; `construct` resamples (..., s, s) maps to (..., t, t)."""

    def __init__(self, src: int, dst: int, mode: str = "nearest_avgpool"):
        super().__init__()
        self.src, self.dst, self.mode = src, dst, mode
        matrix = resample_matrix(src, dst, mode=mode)
        self.matrix = Tensor(matrix)
        self.matrix_t = Tensor(np.ascontiguousarray(matrix.T))

    def extend_repr(self):
        return f"{self.src}x{self.src} -> {self.dst}x{self.dst}, {self.mode}"

    def construct(self, x):
        """(..., s, s) -> (..., t, t) as (A @ X) @ A^T, A cast to x's dtype."""
        return ops.matmul(ops.matmul(self.matrix.astype(x.dtype), x), self.matrix_t.astype(x.dtype))

    def tokens(self, x):
        """Row-major patch tokens (B, s*s, C) -> (B, t*t, C)."""
        b, _, c = x.shape
        grid = x.swapaxes(1, 2).reshape(b, c, self.src, self.src)
        return self.construct(grid).reshape(b, c, self.dst * self.dst).swapaxes(1, 2)

    def relations(self, r):
        """Attention maps (B, C, 1+s*s, 1+s*s) -> (B, C, 1+t*t, 1+t*t).

        The cls row and column are carried over; the key axis is resampled first, then the query axis
        (transpose, same op, transpose back).
        """
        r = self._last_axis(r)
        return self._last_axis(r.swapaxes(-1, -2)).swapaxes(-1, -2)

    def _last_axis(self, r):
        b, c, n, _ = r.shape
        patches = self.construct(r[:, :, :, 1:].reshape(b, c, n, self.src, self.src))
        return ops.cat((r[:, :, :, :1], patches.reshape(b, c, n, self.dst * self.dst)), axis=-1)
