"""Exponential moving average of the weights, with the semantics of timm's ModelEmaV3 as torch_impl uses it.

torch_impl calls `ModelEmaV3(model, decay).update(model, step=num_updates)` after every update, with
warm-up off: the decay is 0 at the first update (the EMA becomes a copy of the weights) and `decay`
afterwards; every floating tensor is interpolated, ema <- ema + (1 - decay) * (weights - ema), frozen
ones included (they never change). Here the EMA weights live in a second `DVT` (`ModelEma.module`, what
evaluation and the checkpoint use), and the interpolation of all tensors is one compiled Cell.

The EMA copy's Parameters are renamed `ema.<name>`: one graph reads both sets and MindSpore needs
unique parameter names within a graph. Cell paths (`parameters_and_names`) keep the plain names, so
checkpoints of `module` carry the usual names.
"""
from __future__ import annotations

import numpy as np
from mindspore import ParameterTuple, Tensor, nn, ops

EMA_PREFIX = "ema."


class _EmaUpdate(nn.Cell):
    def __init__(self, src, dst):
        super().__init__(auto_prefix=False)
        self.src = ParameterTuple(src)
        self.dst = ParameterTuple(dst)

    def construct(self, weight):
        done = True
        for i, e in enumerate(self.dst):
            done = ops.depend(done, ops.assign(e, e + (self.src[i] - e) * weight))
        return done


class ModelEma:
    """`ema = ModelEma(model, copy, decay)` (`copy`: a second DVT of the same config, overwritten here);
    `ema.update(num_updates)` after each update; `ema.module` is the EMA model."""

    def __init__(self, model, module, decay: float = 0.9999):
        self.decay = float(decay)
        self.module = module
        src = [p for _, p in model.parameters_and_names()]
        dst = [p for _, p in module.parameters_and_names()]
        if [tuple(p.shape) for p in src] != [tuple(p.shape) for p in dst]:
            raise ValueError("the EMA copy does not have the model's parameters")
        for s, d in zip(src, dst):
            d.set_data(Tensor(s.asnumpy(), s.dtype))
            d.requires_grad = False
            if not d.name.startswith(EMA_PREFIX):
                d.name = EMA_PREFIX + d.name
        module.set_train(False)
        self._update = _EmaUpdate(src, dst)

    def get_decay(self, step: int | None = None) -> float:
        """timm ModelEmaV3.get_decay with update_after_step=0 and no warm-up."""
        if step is None:
            return self.decay
        return 0.0 if step - 1 <= 0 else self.decay

    def update(self, step: int | None = None) -> None:
        self._update(Tensor(np.array([1.0 - self.get_decay(step)], np.float32)))

    def state(self) -> dict:
        """Canonical-order numpy values of the EMA weights (by cell path)."""
        return {n: p.asnumpy() for n, p in self.module.parameters_and_names()}

    def load_state(self, values: dict) -> None:
        params = dict(self.module.parameters_and_names())
        if set(values) != set(params):
            missing, extra = sorted(set(params) - set(values)), sorted(set(values) - set(params))
            raise ValueError(f"EMA state does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, p in params.items():
            p.set_data(Tensor(np.ascontiguousarray(values[name]), p.dtype))
