"""One training epoch and the evaluation pass of a DVT cascade (MindSpore), mirroring torch_impl/engine.py.

Loss (paper and reference): the sum over exits of weight_k x soft-target cross-entropy(logits_k, targets),
weights 1 by default; targets are smoothed one-hot or mixup/cutmix targets made on the host
(`ms_impl.mixup`), which is what timm's SoftTargetCrossEntropy / LabelSmoothingCrossEntropy compute.

`TrainStep` is one update as one Cell: loss and gradients (`mindspore.value_and_grad`, one forward), the
data-parallel gradient all-reduce, loss-scale unscaling (AMP), the finiteness test, optional global-norm
clipping, then the optimizer, all compiled into one graph in GRAPH mode (eager in PYNATIVE mode). The
update is skipped when the loss (or, under AMP, any gradient) is not finite: a non-finite loss then stops
training with `NonFiniteLossError` naming epoch and step, with the weights of the last good step; an AMP
overflow with a finite loss just skips the step and lowers the loss scale (DynamicLossScaler).
"""
from __future__ import annotations

import itertools
import math
import sys
import time

import mindspore as ms
import mindspore.common.dtype as mstype
import numpy as np
from mindspore import Tensor, nn, ops
from tqdm import tqdm

from common.exits import per_exit

from .optim import adamw_scalars


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def soft_cross_entropy(logits, targets):
    """mean_b sum_c -targets * log_softmax(logits), in float32 (timm's SoftTargetCrossEntropy)."""
    logp = ops.log_softmax(logits.astype(mstype.float32), -1)
    return (-(targets * logp)).sum(-1).mean()


def multi_exit_loss(outputs, targets, weights):
    """sum_k w_k * soft_cross_entropy(outputs[k], targets) (graph-compatible: plain loop over a tuple);
    `outputs`: a forward's output (the tuple of a cascade or the one tensor of a single-exit model)."""
    total = 0.0
    for k, out in enumerate(per_exit(outputs)):
        total = total + weights[k] * soft_cross_entropy(out, targets)
    return total


class LossNet(nn.Cell):
    """model + loss: (images, targets, scale) -> scale * loss (scale is the AMP loss scale, else 1)."""

    def __init__(self, model, exit_weights):
        super().__init__(auto_prefix=False)
        self.model = model
        self.weights = tuple(float(w) for w in exit_weights)

    def construct(self, images, targets, scale):
        return multi_exit_loss(self.model(images), targets, self.weights) * scale


class TrainStep(nn.Cell):
    """One update. Call with (images, targets, lr, eps, wd, scale): lr/eps/wd are the fused AdamW's scalars
    (`ms_impl.optim.adamw_scalars`), `scale` the loss scale (ignored without a loss scaler).
    Returns (loss, applied): the unscaled loss and whether the update was applied."""

    def __init__(self, model, optimizer, exit_weights=None, clip_grad=None, loss_scaler=None, grad_reducer=None):
        super().__init__(auto_prefix=False)
        num_exits = model.config.num_exits
        self.loss_net = LossNet(model, exit_weights or (1.0,) * num_exits)
        self.optimizer = optimizer
        self.grad_fn = ms.value_and_grad(self.loss_net, None, optimizer.parameters)
        self.clip = clip_grad is not None
        self.clip_norm = float(clip_grad) if clip_grad is not None else 0.0
        self.loss_scaler = loss_scaler
        self.scaling = loss_scaler is not None
        self.grad_reducer = grad_reducer
        self.reduce = grad_reducer is not None

    def construct(self, images, targets, lr, eps, wd, scale):
        if self.scaling:
            scale = self.loss_scaler.scale_value
        scaled, grads = self.grad_fn(images, targets, scale)
        loss = scaled / scale
        if self.reduce:
            grads = self.grad_reducer(grads)
        if self.scaling:  # AMP: unscale, and skip the step on any overflow
            grads = self.loss_scaler.unscale(grads)
            finite = ops.logical_and(ms.amp.all_finite(grads), ops.isfinite(loss))
        else:  # as torch_impl: only the loss is tested
            finite = ops.isfinite(loss)
        if self.clip:
            # torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6) when norm > max_norm; MindSpore's
            # clip_by_global_norm by max_norm / max(norm, max_norm): a relative 1e-6/norm difference.
            grads = ops.clip_by_global_norm(grads, self.clip_norm)
        applied = finite
        if finite:
            applied = ops.depend(applied, self.optimizer(grads, lr, eps, wd))
        if self.scaling:
            applied = ops.depend(applied, self.loss_scaler.adjust(finite))
        return loss, applied


class EvalNet(nn.Cell):
    """model -> stacked per-exit logits (K, B, C) float32: one output tensor, one graph."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, x):
        outs = ()
        for out in per_exit(self.model(x)):
            outs += (out.astype(mstype.float32),)
        return ops.stack(outs)


def prepare_batch(images: np.ndarray, labels: np.ndarray, *, num_classes: int, smoothing: float, mixup=None,
                  rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Host side of a step: (images, soft targets) after mixup/cutmix or label smoothing."""
    from .mixup import smooth_targets
    if mixup is not None:
        return mixup(images, labels, rng)
    return np.asarray(images, dtype=np.float32), smooth_targets(labels, num_classes, smoothing)


def _scalar(value: float) -> Tensor:
    return Tensor(np.array([value], dtype=np.float32))


def train_one_epoch(step: TrainStep, batches, *, num_steps: int, epoch: int, num_epochs: int, lr: float,
                    opt_step: int, betas, eps: float, weight_decay: float, num_classes: int, smoothing: float,
                    mixup=None, rng=None, ema=None, num_updates: int = 0, world_size: int = 1,
                    show_progress: bool = True, log_interval: int = 0) -> dict:
    """Train for one epoch of `num_steps` steps. Returns loss, img_per_s, seconds, steps, num_updates and
    opt_step (updates the optimizer applied: AdamW's bias-correction counter).

    Progress: a tqdm bar (loss, img/s) on a terminal; otherwise a line every `log_interval` steps.
    """
    step.set_train(True)
    use_bar = show_progress and sys.stderr.isatty()
    bar = tqdm(total=num_steps, desc=f"epoch {epoch + 1}/{num_epochs}", leave=False, dynamic_ncols=True,
               disable=not use_bar, file=sys.stderr)
    loss_sum, seen, start, index = 0.0, 0, time.perf_counter(), 0
    one = _scalar(1.0)
    for index, (images, labels) in enumerate(itertools.islice(batches, num_steps), start=1):
        images, targets = prepare_batch(images, labels, num_classes=num_classes, smoothing=smoothing, mixup=mixup,
                                        rng=rng)
        lr_t, eps_t, wd_t = adamw_scalars(lr, opt_step + 1, betas, eps, weight_decay)
        loss, applied = step(Tensor(images), Tensor(targets), _scalar(lr_t), _scalar(eps_t), _scalar(wd_t), one)
        value = float(loss.asnumpy())
        if not math.isfinite(value):
            bar.close()
            raise NonFiniteLossError(
                f"loss is {value} at epoch {epoch + 1}, step {index}/{num_steps}; training stopped (the last good "
                "checkpoint is kept; lower --lr, set --clip-grad or turn off --amp)")
        opt_step += int(bool(applied.asnumpy()))
        num_updates += 1
        if ema is not None:
            ema.update(num_updates)
        loss_sum += value * images.shape[0]
        seen += images.shape[0]
        rate = seen * world_size / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.0f}", refresh=False)
        bar.update()
        if show_progress and not use_bar and log_interval and index % log_interval == 0 and index < num_steps:
            print(f"  epoch {epoch + 1} step {index}/{num_steps}  loss {loss_sum / seen:.4f}  {rate:.0f} img/s",
                  flush=True)
    bar.close()
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "img_per_s": seen * world_size / max(seconds, 1e-9),
            "seconds": seconds, "steps": index, "num_updates": num_updates, "opt_step": opt_step}


def collect_logits(eval_net: EvalNet, batches, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-exit logits (K, N, C) float32 and labels (N,) of a whole split, in order. A short last batch is
    padded to `batch_size` (and the padding dropped), so GRAPH mode compiles one shape only."""
    eval_net.set_train(False)
    chunks, labels = [], []
    for images, target in batches:
        n = images.shape[0]
        if n < batch_size:
            images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
        chunks.append(eval_net(Tensor(images)).asnumpy()[:, :n])
        labels.append(np.asarray(target))
    return np.concatenate(chunks, axis=1), np.concatenate(labels).astype(np.int64)


def top1_per_exit(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float(v) for v in (logits.argmax(-1) == labels[None]).mean(axis=1)]


def eval_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Sum over exits of the plain cross-entropy (the validation loss of log.csv), in float64 numpy."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, labels[None, :, None], axis=-1)[..., 0]
    return float(-picked.mean(axis=1).sum())
