#!/usr/bin/env python
"""Train a DVT cascade, then solve its exit thresholds and report its accuracy-vs-GFLOPs curve.

    python torch_impl/train.py                        # tiny DVT on the embedded digits, about 2 minutes on CPU
    python torch_impl/train.py --model dvt_t2t_vit_12 --data-dir /data/imagenet          # reference recipe
    python torch_impl/train.py --model dvt_deit_small --dataset cifar10 --data-dir /data/cifar \\
        --initial-checkpoint dvt_deit_small.pth --epochs 50 --lr 1e-4                    # transfer at 224x224
    torchrun --nproc_per_node=8 torch_impl/train.py --model dvt_t2t_vit_14 --data-dir /data/imagenet
    python torch_impl/train.py --output runs/a --resume auto                              # continue a run

Flags, recipes and YAML (`--config`): `common.training.args` (shared with ms_impl/train.py). Data:
`common.training.resolve_splits` (train / calibration / test). Recipe pieces are timm's: transforms,
Mixup/CutMix, label smoothing, create_optimizer_v2 (AdamW, no weight decay on 1-D parameters and
`no_weight_decay()`), create_scheduler_v2 (cosine with warm-up), ModelEmaV3, torch.amp. The loss is the
sum of the exits' losses (`--exit-weights`).

Every epoch: per-exit top-1 on the calibration split, a log.csv row (TensorBoard too when installed),
and an atomic write of checkpoint.pth (weights, canonical names) and last_state.pth (resume state).
At the end: per-exit outputs of the calibration and test splits, thresholds, curve, plots and
summary.json (`common.training.finalize_run`). Under torchrun: DistributedDataParallel, sharded
training data, rank 0 evaluates and writes. A NaN/inf loss stops the run (exit status 3) with the last
good checkpoint untouched; bad data or checkpoints exit with status 2 and a message.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: put the repository, not torch_impl/, on the path
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(_here)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from common.registry import get_config
from common.training import (CSVLog, checkpoint_extras, epoch_row, finalize_run, format_epoch_line, parse_train_args,
                             resolve_resume, resolve_splits, run_files, run_pictures, write_run_config)
from common.training.run_files import args_to_dict
from common.training.output_folder import claim_train_output
from common.training.recipes import model_overrides
from common.training.splits import check_split_images, dataset_info, num_classes_for
from torch_impl.checkpoint import save_checkpoint
from torch_impl.data import (SplitDataset, TrainLoader, error_message, eval_loader, eval_transform,
                             train_transform)
from torch_impl.distributed import DistInfo, init_distributed
from torch_impl.engine import (NonFiniteLossError, autocast_for, collect_logits, eval_loss, top1_per_exit,
                               train_one_epoch)
from torch_impl.models import create_model
from torch_impl.train_state import capture_rng, load_train_state, restore_rng, save_train_state
from torch_impl.transfer import load_for_transfer

FRAMEWORK = "torch"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_model(args, num_classes: int):
    return create_model(args.model, **model_overrides(args, num_classes))


def criterion_for(args, mixup_active: bool):
    if mixup_active:
        return SoftTargetCrossEntropy()  # smoothing is applied by Mixup's targets
    if args.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return torch.nn.CrossEntropyLoss()


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


@dataclass
class Optimisation:
    """Everything that updates the weights, built from the flags (timm's recipe pieces)."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    num_epochs: int  # --epochs + --cooldown-epochs, as timm's scheduler counts them
    scaler: torch.amp.GradScaler
    autocast: object
    ema: ModelEmaV3 | None
    mixup_fn: Mixup | None
    criterion: torch.nn.Module


def grad_scaler(args, device: torch.device) -> torch.amp.GradScaler:
    """torch.amp's loss scaling on CUDA: --loss-scale 'dynamic' (its defaults) or a fixed start that never grows."""
    enabled = args.amp and device.type == "cuda"
    if args.loss_scale == "dynamic":
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.amp.GradScaler("cuda", init_scale=float(args.loss_scale), growth_interval=2 ** 31 - 1, enabled=enabled)


def build_optimisation(args, model, steps_per_epoch: int, device: torch.device) -> Optimisation:
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    eps=args.opt_eps, betas=tuple(args.opt_betas))
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, cooldown_epochs=args.cooldown_epochs,
        updates_per_epoch=steps_per_epoch)
    mixup_active = args.mixup > 0 or args.cutmix > 0
    mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                     switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing,
                     num_classes=model.num_classes) if mixup_active else None
    return Optimisation(optimizer, scheduler, num_epochs,
                        grad_scaler(args, device),
                        autocast_for(device, args.amp),
                        ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None,
                        mixup_fn, criterion_for(args, mixup_active).to(device))


def restore(path: str, model, opt: Optimisation, args, dist: DistInfo) -> tuple[int, int]:
    """Load a training state into model and optimisation; returns (completed epochs, updates)."""
    state = load_train_state(path)
    if state["model_name"] != model.config.name:
        raise ValueError(f"--resume {path}: the state is of model {state['model_name']!r}, not {model.config.name!r}")
    model.load_state_dict(state["model"])
    opt.optimizer.load_state_dict(state["optimizer"])
    if state["scheduler"] is not None:
        opt.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] is not None and opt.scaler.is_enabled():
        opt.scaler.load_state_dict(state["scaler"])
    if opt.ema is not None:
        if state["ema"] is None:
            raise ValueError(f"--resume {path}: the run had no EMA; drop --model-ema or start afresh")
        opt.ema.load_state_dict(state["ema"])
    epoch, updates = int(state["epoch"]), int(state["num_updates"])
    if len(state["rng"]) == dist.world_size:
        restore_rng(state["rng"][dist.rank])
    else:  # another world size: fresh, but reproducible, streams
        seed_everything(args.seed + 1000 * epoch + dist.rank)
    if epoch > 0:
        opt.scheduler.step(epoch)
    return epoch, updates


def gather_problems(dist: DistInfo):
    """The data checks' merge of every rank's list of problems (None on one process)."""
    if not dist.distributed:
        return None
    return lambda problems: [p for part in dist.all_gather_object(problems) for p in part]


def train(args, dist: DistInfo, out: Path) -> int:
    files, device = run_files(FRAMEWORK), dist.device
    started = time.perf_counter()
    seed_everything(args.seed)  # same model initialisation on every rank
    img_size = args.img_size or get_config(args.model).img_size
    splits = resolve_splits(args.dataset, args.data_dir, img_size, args.calib_size)
    check_split_images(splits, show_progress=dist.is_main, rank=dist.rank, world_size=dist.world_size,
                       combine=gather_problems(dist))
    model = build_model(args, num_classes_for(args.num_classes, splits))
    cfg = model.config
    resume = resolve_resume(args.resume, out, FRAMEWORK)
    if args.initial_checkpoint and not resume:
        heads = load_for_transfer(model, args.initial_checkpoint)
        if dist.is_main:
            print(f"initialised from {args.initial_checkpoint}" +
                  (f"; re-initialised heads: {', '.join(heads)}" if heads else ""))
    model.to(device)
    pin = device.type == "cuda"
    loader = TrainLoader(SplitDataset(splits.train, train_transform(cfg, args), "train"), args.batch_size,
                         args.workers, args.seed, dist.rank, dist.world_size, pin)
    calib_loader = eval_loader(SplitDataset(splits.calib, eval_transform(cfg), "calibration"), args.eval_batch_size,
                               args.workers, pin)
    steps = len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch)
    opt = build_optimisation(args, model, steps, device)
    start_epoch, num_updates = 0, 0
    if resume:
        start_epoch, num_updates = restore(resume, model, opt, args, dist)
        if dist.is_main:
            print(f"resumed from {resume} after epoch {start_epoch}")
    else:
        seed_everything(args.seed + dist.rank)  # own augmentation / dropout stream per rank
    net = model
    if dist.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if pin else None)
    eval_model = opt.ema.module if opt.ema is not None else model
    log = writer = None
    if dist.is_main:
        write_run_config(out, cfg, args, FRAMEWORK)
        log = CSVLog(out / files["log"], keep_epochs=start_epoch if resume else None)
        writer = tensorboard_writer(out)
        print(f"{cfg.name}: {sum(p.numel() for p in model.parameters()):,} parameters, {cfg.num_exits} exits; "
              f"{splits.source}: {splits.sizes()}; {opt.num_epochs} epochs x {steps} steps of "
              f"{args.batch_size} x {dist.world_size} on {device}")

    calib = None
    for epoch in range(start_epoch, opt.num_epochs):
        lr = opt.optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(net, loader.epoch(epoch), opt.optimizer, opt.criterion, device=device, epoch=epoch,
                                num_epochs=opt.num_epochs, exit_weights=args.exit_weights, mixup_fn=opt.mixup_fn,
                                scaler=opt.scaler, autocast=opt.autocast, clip_grad=args.clip_grad, ema=opt.ema,
                                scheduler=opt.scheduler, num_updates=num_updates,
                                max_steps=args.max_steps_per_epoch, world_size=dist.world_size,
                                show_progress=dist.is_main, log_interval=args.log_interval)
        num_updates = stats["num_updates"]
        opt.scheduler.step(epoch + 1)
        rng = dist.all_gather_object(capture_rng())
        if dist.is_main:
            calib = collect_logits(eval_model, calib_loader, device, opt.autocast)
            top1 = top1_per_exit(*calib)
            save_checkpoint(eval_model, out / files["checkpoint"],
                            extras={"epoch": epoch + 1, "ema": opt.ema is not None})
            save_train_state(out / files["train_state"], model=model, optimizer=opt.optimizer,
                             scheduler=opt.scheduler, scaler=opt.scaler, ema=opt.ema, epoch=epoch + 1,
                             num_updates=num_updates, rng=rng, args=args_to_dict(args))
            row = epoch_row(epoch + 1, lr, stats, top1, eval_loss(*calib))
            log.append(row)  # after the state: log.csv never lists an epoch that a resume would redo
            print(format_epoch_line(epoch + 1, opt.num_epochs, lr, stats, top1), flush=True)
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, epoch + 1)
        dist.barrier()
    if not dist.is_main:
        return 0  # rank 0 evaluates and writes; no collective follows, so the others may leave
    if writer is not None:
        writer.close()
    train_seconds = time.perf_counter() - started
    if calib is None:  # nothing left to train after a resume
        calib = collect_logits(eval_model, calib_loader, device, opt.autocast)
    test_loader = eval_loader(SplitDataset(splits.test, eval_transform(cfg), "test"), args.eval_batch_size,
                              args.workers, pin)
    test = collect_logits(eval_model, test_loader, device, opt.autocast)
    train_outputs = None
    if args.calibrate_on == "train":  # the paper's thresholds: training images, no augmentation
        train_outputs = collect_logits(eval_model, eval_loader(SplitDataset(splits.train, eval_transform(cfg), "train"),
                                                               args.eval_batch_size, args.workers, pin),
                                       device, opt.autocast)
    summary = finalize_run(out, cfg, calib=calib, test=test, train=train_outputs, framework=FRAMEWORK, mode="train",
                           dataset=dataset_info(args.dataset, splits),
                           weights={"checkpoint": files["checkpoint"], "ema": opt.ema is not None,
                                    "epochs_completed": opt.num_epochs, "epochs": opt.num_epochs},
                           solvers=args.solvers, seed=args.seed, train_seconds=train_seconds,
                           **run_pictures(splits, args))
    save_checkpoint(eval_model, out / files["checkpoint"],
                    extras={"epoch": opt.num_epochs, "ema": opt.ema is not None, **checkpoint_extras(out, summary)})
    print(f"done in {time.perf_counter() - started:.0f} s; outputs in {out}")
    return 0


def main(argv=None) -> int:
    args = parse_train_args(argv, framework=FRAMEWORK)
    try:
        dist = init_distributed(args.device)
    except RuntimeError as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    try:
        with claim_train_output(args, FRAMEWORK, writer=dist.is_main) as out:
            dist.barrier()  # every rank has checked --output before rank 0 writes into it (no race on run files)
            return train(args, dist, out)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as err:  # data, checkpoint and argument problems
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(main())
