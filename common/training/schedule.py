"""The learning-rate schedule of both trainers, as numbers: timm's cosine schedule with linear warm-up.

`torch_impl/train.py` gets it from `timm.scheduler.create_scheduler_v2(sched='cosine', ...)` with timm's
default `step_on_epochs=True`: the rate is set once per epoch and held for all of the epoch's updates.
Frameworks without timm (`ms_impl/train.py`) compute the same values here:

    lr(t) = warmup_lr + t * (lr - warmup_lr) / warmup_epochs                 t < warmup_epochs
          = min_lr + (lr - min_lr) / 2 * (1 + cos(pi * t / epochs))          warmup_epochs <= t < epochs
          = min_lr                                                            t >= epochs (cool-down)

(timm's `warmup_prefix=False`: warm-up counts inside `epochs`, so the cosine starts at t = warmup_epochs
below the peak.) The run lasts `epochs + cooldown_epochs` epochs, as timm's `num_epochs` return value.
"""
from __future__ import annotations

import math

SCHEDULES = ("cosine",)


def check_schedule(sched: str) -> None:
    if sched not in SCHEDULES:
        raise ValueError(f"--sched {sched!r} is not supported by this trainer; supported: {', '.join(SCHEDULES)}")


def total_epochs(epochs: int, cooldown_epochs: int = 0) -> int:
    """Epochs the run trains for (timm's `num_epochs` from create_scheduler_v2)."""
    return int(epochs) + int(cooldown_epochs)


def lr_at(epoch: int, *, lr: float, epochs: int, warmup_epochs: int = 0, warmup_lr: float = 0.0,
          min_lr: float = 0.0) -> float:
    """The learning rate of (0-based) `epoch`, exactly as timm's CosineLRScheduler._get_lr(epoch)."""
    if epoch < warmup_epochs:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup_epochs
    if epoch >= epochs:  # timm: the cycle is over (cycle_limit 1)
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))


def lr_for_args(epoch: int, args) -> float:
    """`lr_at` with the run's flags (--lr, --epochs, --warmup-epochs, --warmup-lr, --min-lr)."""
    check_schedule(args.sched)
    return lr_at(epoch, lr=args.lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                 min_lr=args.min_lr)
