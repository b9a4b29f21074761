"""Token-grid resampling from s x s to t x t with the shared constant matrix of `common.resample`.

The reference resizes by nearest x2 upsampling then adaptive average pooling. Both are linear and
separable, so `y = (A @ X) @ A^T` with one (t, s) matrix A computed once in numpy: torch and
MindSpore multiply by the same bits, and any s -> t with s <= t <= 2s works (DESIGN.md §2).

FLOPs: fvcore would charge the two matmuls differently from the reference's upsample + pool. Under
tracing (which is how fvcore sees a model) the op is therefore recorded as one opaque
`prim::PythonOp.GridResampleFn` that `torch_impl.flops` prices with `common.resample.resample_flops`.
Eager, compiled and exported models see the plain matmuls, which autograd differentiates. The MindSpore
port's plain nearest resize (`mode="nearest"`) is traced as `NearestResampleFn`, priced by its own rule.
"""
from __future__ import annotations

import torch
from torch import nn

from common.resample import resample_matrix


def _resample(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (a @ x) @ a.transpose(-1, -2)


class GridResampleFn(torch.autograd.Function):
    """`(A @ X) @ A^T` as a single traced node; backward is `A^T @ G @ A`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a)
        ctx.x_dtype = x.dtype
        return _resample(x, a)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (a,) = ctx.saved_tensors
        a = a.to(grad.dtype)
        return ((a.transpose(-1, -2) @ grad) @ a).to(ctx.x_dtype), None


class NearestResampleFn(GridResampleFn):
    """The same product for the plain nearest matrix; a separate class so that FLOPs tools see the mode."""


TRACED_OPS = {"nearest_avgpool": GridResampleFn, "nearest": NearestResampleFn}


def resample_grid(x: torch.Tensor, matrix: torch.Tensor, mode: str = "nearest_avgpool") -> torch.Tensor:
    """Resample (..., s, s) maps to (..., t, t); `matrix` is the float32 (t, s) constant of `mode`."""
    a = matrix.to(dtype=x.dtype)
    if torch.jit.is_tracing():
        return TRACED_OPS[mode].apply(x, a)
    return _resample(x, a)


class GridResample(nn.Module):
    """Holds A for one s -> t step (a non-persistent buffer: never in a state dict)."""

    def __init__(self, src: int, dst: int, mode: str = "nearest_avgpool"):
        super().__init__()
        self.src, self.dst, self.mode = src, dst, mode
        self.register_buffer("matrix", torch.tensor(resample_matrix(src, dst, mode=mode)), persistent=False)

    def extra_repr(self) -> str:
        return f"{self.src}x{self.src} -> {self.dst}x{self.dst}, {self.mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., s, s) -> (..., t, t)."""
        return resample_grid(x, self.matrix, self.mode)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Row-major patch tokens (B, s*s, C) -> (B, t*t, C)."""
        B, _, C = x.shape
        grid = x.transpose(1, 2).reshape(B, C, self.src, self.src)
        return self(grid).reshape(B, C, self.dst * self.dst).transpose(1, 2)

    def relations(self, r: torch.Tensor) -> torch.Tensor:
        """Attention maps (B, C, 1+s*s, 1+s*s) -> (B, C, 1+t*t, 1+t*t).

        The cls row and column are carried over; the key axis is resampled first, then the
        query axis (transpose, same op, transpose back).
        """
        r = self._last_axis(r)
        return self._last_axis(r.transpose(-1, -2)).transpose(-1, -2)

    def relations_into(self, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`relations` of maps (C, 1+s*s, 1+s*s), written into `out` (C, 1+t*t, 1+t*t).

        The same products with A, arranged for inference (no autograd): each axis of the s x s patch grid
        is one batched matmul over all maps, and the large intermediates are never concatenated or
        copied; the cls row and column are carried. Equal to `relations` within fp32 rounding (the
        products are summed in another order).
        """
        a = self.matrix.to(r.dtype)
        s, t = self.src, self.dst
        C, T = r.shape[0], 1 + t * t
        out[:, 0] = self._keys(r[:, :1], a)[:, 0]  # cls row: key axis only
        patch_rows = self._keys(r[:, 1:], a)  # (C, s*s, T), query rows in row-major (i1, i2) order
        rows = (a @ patch_rows.view(C * s, s, T)).view(C, s, t * T)  # query axis i2
        torch.matmul(a, rows, out=out[:, 1:].view(C, t, t * T))  # query axis i1
        return out

    def _keys(self, r: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Key axis of (C, n, 1+s*s) maps -> (C, n, 1+t*t): cls column carried, A X A^T on the patch grid."""
        C, n, _ = r.shape
        s, t = self.src, self.dst
        out = r.new_empty(C, n, 1 + t * t)
        out[..., 0] = r[..., 0]
        out[..., 1:] = ((a @ r[..., 1:].reshape(C * n, s, s)) @ a.transpose(0, 1)).view(C, n, t * t)
        return out

    def _last_axis(self, r: torch.Tensor) -> torch.Tensor:
        lead = r.shape[:-1]  # any leading dims (batched maps or one image's); a shape expression torch.fx traces
        patches = self(r[..., 1:].reshape(lead + (self.src, self.src)))
        return torch.cat([r[..., :1], patches.reshape(lead + (self.dst * self.dst,))], dim=-1)
