"""Small building blocks shared by every DVT cell: Linear/LayerNorm with the reference init, the GELU
factory, Mlp and DropPath (MindSpore has no timm, so the last two are written out here).

MindSpore's defaults differ from torch's where parity depends on them (DESIGN.md §6): `nn.LayerNorm`
uses eps 1e-7, `nn.GELU()` the tanh approximation, `nn.Dense` a He-uniform init. The helpers here spell
every one of those choices out, so no cell of the model relies on a framework default.

Kernels that GRAPH mode on CPU pays for (measured on MindSpore 2.10, README "MindSpore GRAPH mode
memory"): its CPU `Transpose` kernel keeps a table of one 8-byte offset per output element, `Div` and
every broadcasting `Add`/`Sub`/`Mul` two of them, for as long as the compiled graph lives, and its
`StridedSlice` copies slowly. So the cells avoid them on activations: heads are split and merged with
`split`/`stack`/`cat` (`split_heads`, `merge_heads`), matmuls take their transposes as `BatchMatMul`
flags, broadcasts are explicit (`ops.broadcast_to`, then a same-shape op), and a division by a
tensor is a multiplication by its (small) reciprocal. These only move data or round alike (within
one fp32 ulp for the reciprocal), and they are as fast or faster in PYNATIVE mode too.
"""
from __future__ import annotations

from functools import partial

from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal

__all__ = ["linear", "layer_norm", "GELU", "gelu_layer", "dropout", "drop_path_layer", "DropPath", "Mlp",
           "global_pool_nlc", "split_heads", "merge_heads", "bmm", "bmm_nt", "bmm_tn", "matmul_nt"]

SQRT1_2 = 0.7071067811865476  # 1 / sqrt(2), as torch's exact GELU kernel multiplies by it

# matmuls with their transposes as kernel flags (module docstring); stateless primitives, shared by every cell
bmm = ops.BatchMatMul()
bmm_nt = ops.BatchMatMul(transpose_b=True)  # a @ b^T
bmm_tn = ops.BatchMatMul(transpose_a=True)  # a^T @ b
matmul_nt = ops.MatMul(transpose_b=True)  # 2-D a @ b^T


def split_heads(x, parts: int, num_heads: int) -> tuple:
    """(B, T, parts * H * hd) -> `parts` tensors (B, H, T, hd): exactly the reshape + permute + select of the
    reference, written as one split and `parts` stacks (no Transpose / StridedSlice kernel, module docstring)."""
    pieces = ops.split(x, x.shape[-1] // (parts * num_heads), axis=-1)
    return tuple(ops.stack(pieces[i * num_heads:(i + 1) * num_heads], axis=1) for i in range(parts))


def merge_heads(x):
    """(B, H, T, hd) -> (B, T, H * hd), the reference's transpose(1, 2).reshape, as a split and a concat."""
    b, h, t, d = x.shape
    return ops.cat([p.reshape(b, t, d) for p in ops.split(x, 1, axis=1)], axis=-1)


def linear(in_features: int, out_features: int, bias: bool = True) -> nn.Dense:
    """`nn.Dense` (weight (out, in) like torch) with trunc_normal(.02) weights and zero bias (reference init)."""
    return nn.Dense(in_features, out_features, weight_init=TruncatedNormal(sigma=0.02), bias_init="zeros",
                    has_bias=bias)


def layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    """LayerNorm over the last axis, weight 1 / bias 0, with an explicit epsilon (MindSpore's default is 1e-7)."""
    return nn.LayerNorm((dim,), epsilon=eps)


class GELU(nn.Cell):
    """GELU with torch's string API: approximate='none' (exact, erf) or 'tanh'.

    Written over `ops.gelu` rather than `nn.GELU`, whose `approximate` argument changes from bool to str
    (and its default from tanh) across MindSpore 2.x releases: the choice here never depends on a default.
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def construct(self, x):
        if self.approximate == "none":
            # x/2 (1 + erf(x / sqrt 2)), multiplied out as torch's CPU kernel does: MindSpore's own exact
            # gelu divides by sqrt 2 and adds a 0-d tensor, two table-keeping kernels in GRAPH mode (module
            # docstring); this form is also faster in both modes.
            return x * 0.5 * (1.0 + ops.erf(x * SQRT1_2))
        return ops.gelu(x, approximate=self.approximate)

    def extend_repr(self):
        return f"approximate={self.approximate!r}"


def gelu_layer(kind: str):
    """GELU cell factory: 'erf' is the exact GELU of the reference, 'tanh' the approximation."""
    if kind == "erf":
        return partial(GELU, approximate="none")
    if kind == "tanh":
        return partial(GELU, approximate="tanh")
    raise ValueError(f"gelu must be 'erf' or 'tanh', got {kind!r}")


def dropout(p: float) -> nn.Dropout:
    """`nn.Dropout` with the MindSpore 2.x keyword `p` (drop probability); identity in eval mode or at p=0."""
    return nn.Dropout(p=float(p))


class DropPath(nn.Cell):
    """Stochastic depth per sample, as timm's DropPath: drop the residual branch, scale survivors by 1/keep.

    One keep/drop draw per sample: `nn.Dropout` applied to a (B, 1, ..., 1) tensor of ones gives exactly
    timm's bernoulli(keep) / keep mask. Identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.dropout = dropout(self.drop_prob)

    def construct(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * self.dropout(ops.ones(shape, x.dtype))

    def extend_repr(self):
        return f"drop_prob={self.drop_prob}"


def drop_path_layer(rate: float) -> nn.Cell:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def global_pool_nlc(x, pool_type: str = "token"):
    """timm's `global_pool_nlc` with one prefix (cls) token: (B, T, D) -> (B, D); '' returns x unchanged."""
    if not pool_type:
        return x
    if pool_type == "token":
        return x[:, 0]
    patches = x[:, 1:]
    if pool_type == "avg":
        return patches.mean(axis=1)
    if pool_type == "max":
        return patches.max(axis=1)
    return 0.5 * (patches.max(axis=1) + patches.mean(axis=1))  # 'avgmax'


class Mlp(nn.Cell):
    """timm's Mlp: fc1 -> act -> drop -> fc2 -> drop (parameter names fc1/fc2)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=None, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        act_layer = act_layer or gelu_layer("erf")
        self.fc1 = linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = dropout(drop)
        self.fc2 = linear(hidden_features, out_features)
        self.drop2 = dropout(drop)

    def construct(self, x):
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))
