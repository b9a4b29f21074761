"""One training epoch and the evaluation pass of a DVT cascade.

Loss (paper and reference): the sum over exits of weight_k x criterion(logits_k, target), weights 1 by
default. A non-finite loss stops training with `NonFiniteLossError` naming the epoch and step, before
any update is applied.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time

import numpy as np
import torch
from timm.utils import dispatch_clip_grad
from tqdm import tqdm

from common.exits import per_exit


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def multi_exit_loss(outputs, target, criterion, weights=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(sum_k w_k * criterion(outputs[k], target), [per-exit losses]); `outputs`: a forward's output
    (the tuple of a cascade or the one tensor of a single-exit model)."""
    losses = [criterion(out, target) for out in per_exit(outputs)]
    weights = weights or [1.0] * len(losses)
    return sum(w * loss for w, loss in zip(weights, losses)), losses


def autocast_for(device: torch.device, enabled: bool):
    """torch.amp autocast (float16 on CUDA, bfloat16 on CPU), or a no-op context."""
    if not enabled:
        return contextlib.nullcontext
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(model, loader, optimizer, criterion, *, device, epoch: int, num_epochs: int, exit_weights=None,
                    mixup_fn=None, scaler=None, autocast=contextlib.nullcontext, clip_grad=None, ema=None,
                    scheduler=None, num_updates: int = 0, max_steps=None, world_size: int = 1,
                    show_progress: bool = True, log_interval: int = 0) -> dict:
    """Train for one epoch (at most `max_steps` steps). Returns loss, img_per_s, seconds, steps, num_updates.

    Progress: a tqdm bar (loss, img/s) on a terminal; otherwise a line every `log_interval` steps.
    """
    model.train()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    use_bar = show_progress and sys.stderr.isatty()
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{num_epochs}", leave=False, dynamic_ncols=True,
               disable=not use_bar, file=sys.stderr)
    loss_sum, seen, start = 0.0, 0, time.perf_counter()
    step = 0
    for step, (images, target) in enumerate(itertools.islice(loader, total), start=1):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, target = mixup_fn(images, target)
        with autocast():
            loss, _ = multi_exit_loss(model(images), target, criterion, exit_weights)
        value = float(loss.detach())
        if not math.isfinite(value):
            bar.close()
            raise NonFiniteLossError(
                f"loss is {value} at epoch {epoch + 1}, step {step}/{total}; training stopped (the last good "
                "checkpoint is kept; lower --lr, set --clip-grad or turn off --amp)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if clip_grad is not None:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad is not None:
                dispatch_clip_grad(model.parameters(), clip_grad)
            optimizer.step()
        num_updates += 1
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model, step=num_updates)
        if scheduler is not None:
            scheduler.step_update(num_updates=num_updates)
        loss_sum += value * images.shape[0]
        seen += images.shape[0]
        rate = seen * world_size / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.0f}", refresh=False)
        bar.update()
        if show_progress and not use_bar and log_interval and step % log_interval == 0 and step < total:
            print(f"  epoch {epoch + 1} step {step}/{total}  loss {loss_sum / seen:.4f}  {rate:.0f} img/s", flush=True)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "img_per_s": seen * world_size / max(seconds, 1e-9),
            "seconds": seconds, "steps": step, "num_updates": num_updates}


@torch.no_grad()
def collect_logits(model, loader, device, autocast=contextlib.nullcontext) -> tuple[np.ndarray, np.ndarray]:
    """Per-exit logits (K, N, C) float32 and labels (N,) of a whole split, in loader order."""
    model.eval()
    chunks, labels = [], []
    for images, target in loader:
        with autocast():
            outputs = per_exit(model(images.to(device, non_blocking=True)))
        chunks.append(torch.stack([o.float() for o in outputs]).cpu())
        labels.append(target)
    return torch.cat(chunks, dim=1).numpy(), torch.cat(labels).numpy().astype(np.int64)


def top1_per_exit(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float(v) for v in (logits.argmax(-1) == labels[None]).mean(axis=1)]


def eval_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Sum over exits of the plain cross-entropy (the validation loss of log.csv)."""
    t = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    return float(sum(torch.nn.functional.cross_entropy(t[k], y) for k in range(t.shape[0])))
