"""Token-grid resampling from s x s to t x t with the shared constant matrix of `common.resample`.

The reference resizes by nearest x2 upsampling then adaptive average pooling. Both are linear and
separable, so `y = (A @ X) @ A^T` with one (t, s) matrix A computed once in numpy: torch and MindSpore
multiply by the same bits, with the same op order, and any s -> t with s <= t <= 2s works. A is a
constant Tensor, not a Parameter: nothing to train, nothing in a checkpoint. `mode="nearest"` is the
MindSpore port's plain nearest resize (`common.resample`).

MindSpore-specific: the grid's axes are brought to A by reshapes alone (no Transpose kernel, see
`layers.py`), A stays un-broadcast (`ops.matmul` broadcasts it; an explicit `broadcast_to` of a constant
is folded at compile time into a batch-sized constant that the graph keeps), and the sums run in the
reference order (rows of the grid first, then columns; keys before queries), as torch_impl's
`(A @ X) @ A^T`.
"""
from __future__ import annotations

from mindspore import Tensor, nn, ops

from common.resample import resample_matrix

from .layers import matmul_nt


class GridResample(nn.Cell):
    """Holds A for one s -> t step; `construct` resamples (..., s, s) maps to (..., t, t)."""

    def __init__(self, src: int, dst: int, mode: str = "nearest_avgpool"):
        super().__init__()
        self.src, self.dst, self.mode = src, dst, mode
        self.matrix = Tensor(resample_matrix(src, dst, mode=mode))

    def extend_repr(self):
        return f"{self.src}x{self.src} -> {self.dst}x{self.dst}, {self.mode}"

    def _left(self, x):
        """A @ x for x (N, s, M) -> (N, t, M)."""
        return ops.matmul(self.matrix.astype(x.dtype), x)

    def construct(self, x):
        """(..., s, s) -> (..., t, t) as (A @ X) @ A^T, A cast to x's dtype."""
        s, t = self.src, self.dst
        lead = x.shape[:-2]
        y = self._left(x.reshape(-1, s, s))  # (N, t, s): rows
        y = matmul_nt(y.reshape(-1, s), self.matrix.astype(x.dtype))  # (N * t, t): columns
        return y.reshape(lead + (t, t))

    def _rows_then_columns(self, x):
        """Grid axis pair (s_i, s_j) in front of M values per cell: x (N, s*s, M) -> (N, t*t, M).

        Rows: x viewed (N, s, s*M), A on the left; columns: (N*t, s, M), A on the left again."""
        s, t = self.src, self.dst
        n, _, m = x.shape
        y = self._left(x.reshape(n, s, s * m))  # (N, t, s*M)
        return self._left(y.reshape(-1, s, m)).reshape(n, t * t, m)

    def tokens(self, x):
        """Row-major patch tokens (B, s*s, C) -> (B, t*t, C)."""
        return self._rows_then_columns(x)

    def relations(self, r):
        """Attention maps (B, C, 1+s*s, 1+s*s) -> (B, C, 1+t*t, 1+t*t).

        The cls row and column are carried over; the key axis is resampled first, then the query axis.
        """
        b, c, n, _ = r.shape
        cls_col, keys = ops.split(r, [1, n - 1], axis=-1)
        keys = self.construct(keys.reshape(b, c, n, self.src, self.src)).reshape(b, c, n, -1)
        r = ops.cat((cls_col, keys), axis=-1)  # (B, C, n, T)
        cls_row, queries = ops.split(r, [1, n - 1], axis=-2)
        queries = self._rows_then_columns(queries.reshape(b * c, n - 1, r.shape[-1]))
        return ops.cat((cls_row, queries.reshape(b, c, -1, r.shape[-1])), axis=-2)
