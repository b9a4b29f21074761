"""AdamW with torch's semantics on MindSpore's fused AdamWeightDecay kernel, and timm's parameter groups.

torch / timm AdamW, one step t (decoupled weight decay, bias-corrected moments):

    p <- p * (1 - lr*wd)
    m <- b1 m + (1-b1) g ;  v <- b2 v + (1-b2) g^2
    p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

`mindspore.experimental.optim.AdamW` computes exactly this, but as ~10 element-wise kernels per parameter:
on CPU, for the 281 tensors of the digits model, that is +58 s of graph compilation and +0.07 s per step
against a fused kernel (measured, DESIGN.md §6 numbers in the README section). MindSpore's fused
`ops.AdamWeightDecay` kernel (one launch per tensor) computes, without bias correction,

    m, v as above ;  p <- p - lr' * (m / (sqrt(v) + eps') + wd' * p)

so with the per-step scalars (`adamw_scalars`, computed in float64 on the host)

    c1 = 1 - b1^t, c2 = sqrt(1 - b2^t):   lr' = lr * c2 / c1,  eps' = eps * c2,  wd' = wd * c1 / c2

it performs the torch update exactly (in exact arithmetic; float32 rounding of the folded scalars differs
from torch's by ~1e-7 relative, as `experimental.optim.AdamW`'s own float32 scalars do).
tests/test_ms_train.py checks it against `mindspore.experimental.optim.AdamW` step by step.

Parameter groups are timm's `create_optimizer_v2` groups: no weight decay for 1-D tensors (biases,
LayerNorm gamma/beta) and for the model's `no_weight_decay()` names (cls tokens, position embeddings);
frozen parameters (the Performer's `w`, the sinusoid tables) are not optimised at all.
"""
from __future__ import annotations

from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
import mindspore.common.dtype as mstype

OPTIMIZERS = ("adamw",)


def check_optimizer(name: str) -> None:
    if name.lower() not in OPTIMIZERS:
        raise ValueError(f"--opt {name!r} is not supported by ms_impl/train.py; supported: {', '.join(OPTIMIZERS)}")


def decay_flags(model, params) -> tuple[bool, ...]:
    """timm's param_groups_weight_decay rule, per parameter: decay unless 1-D, a bias or in no_weight_decay()."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return tuple(not (p.ndim <= 1 or p.name.endswith(".bias") or p.name in skip) for p in params)


def adamw_scalars(lr: float, step: int, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    """(lr', eps', wd') of the fused kernel for update number `step` (1-based): see the module docstring."""
    if step < 1:
        raise ValueError(f"AdamW step numbers start at 1, got {step}")
    c1 = 1.0 - betas[0] ** step
    c2 = (1.0 - betas[1] ** step) ** 0.5
    return lr * c2 / c1, eps * c2, weight_decay * c1 / c2


class AdamW(nn.Cell):
    """Fused, torch-equivalent AdamW. Call with (grads, lr', eps', wd') from `adamw_scalars` (scalar tensors).

    State: `exp_avg.*` / `exp_avg_sq.*` Parameters (torch's names), read and written by train_state.py.
    The step count and the learning rate live on the host (the trainer's `num_updates` and schedule), so a
    changing learning rate never recompiles the graph.
    """

    def __init__(self, params, decay: tuple[bool, ...], betas=(0.9, 0.999)):
        super().__init__(auto_prefix=False)
        self.parameters = ParameterTuple(params)
        if len(decay) != len(self.parameters):
            raise ValueError(f"{len(decay)} decay flags for {len(self.parameters)} parameters")
        self.decay = tuple(bool(d) for d in decay)
        self.exp_avg = self.parameters.clone(prefix="exp_avg", init="zeros")
        self.exp_avg_sq = self.parameters.clone(prefix="exp_avg_sq", init="zeros")
        self.beta1 = Tensor([betas[0]], mstype.float32)
        self.beta2 = Tensor([betas[1]], mstype.float32)
        self.zero = Tensor([0.0], mstype.float32)
        self.kernel = ops.AdamWeightDecay()

    def construct(self, grads, lr, eps, weight_decay):
        done = True
        for i, param in enumerate(self.parameters):
            wd = weight_decay if self.decay[i] else self.zero
            done = ops.depend(done, self.kernel(param, self.exp_avg[i], self.exp_avg_sq[i], lr, self.beta1,
                                                self.beta2, eps, wd, ops.cast(grads[i], param.dtype)))
        return done

    def state_parameters(self) -> list[Parameter]:
        return list(self.exp_avg) + list(self.exp_avg_sq)
