#!/usr/bin/env python
"""Train a DVT cascade with MindSpore, then solve its exit thresholds and report its accuracy-vs-GFLOPs curve.

    python ms_impl/train.py                           # tiny DVT on the embedded digits, CPU, GRAPH mode
    python ms_impl/train.py --device Ascend --model dvt_t2t_vit_12 --data-dir /data/imagenet   # one card
    msrun --worker_num=8 --local_worker_num=8 --master_addr=127.0.0.1 --master_port=8118 --join=True \\
        --log_dir=msrun_log python ms_impl/train.py --device Ascend --model dvt_t2t_vit_12 --data-dir /data/imagenet
    python ms_impl/train.py --output runs/a --resume auto                                 # continue a run

The mirror of torch_impl/train.py: same flags (`common.training.args`, plus --device CPU|GPU|Ascend and
--mode graph|pynative), same splits, same outputs (checkpoint.ckpt / last_state.ckpt instead of .pth).
Recipe pieces: `mindspore.dataset` pipelines with MindSpore's vision transforms (ms_impl/data.py),
timm-style Mixup/CutMix with label smoothing (ms_impl/mixup.py), torch-equivalent AdamW with timm's
parameter groups (ms_impl/optim.py), timm's per-epoch cosine schedule with warm-up
(common/training/schedule.py), ModelEmaV3-style EMA (ms_impl/ema.py), gradient clipping, and on
Ascend/GPU mixed precision (ms_impl/amp.py 'O1', float16) with dynamic loss scaling that skips
overflowing steps. The loss is the sum of the exits' losses (`--exit-weights`).

Every epoch: per-exit top-1 on the calibration split, a log.csv row, and an atomic write of
checkpoint.ckpt (weights, MindSpore names, config) and last_state.ckpt (resume state). At the end:
per-exit outputs of the calibration and test splits, thresholds, curve, plots and summary.json
(`common.training.finalize_run`). Under msrun: data parallel (gradient mean all-reduce), sharded training
data, rank 0 evaluates and writes. A NaN/inf loss stops the run (exit status 3) with the last good
checkpoint untouched; bad data or checkpoints exit with status 2 and a message.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: put the repository, not ms_impl/, on the path
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(_here)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

import random
import time
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import numpy as np

from common.registry import get_config
from common.training import (CSVLog, checkpoint_extras, epoch_row, finalize_run, format_epoch_line, parse_train_args,
                             resolve_resume, resolve_splits, run_files, run_pictures, write_run_config)
from common.training.run_files import args_to_dict
from common.training.output_folder import claim_train_output
from common.training.recipes import dropout_sources, model_overrides
from common.training.splits import check_split_images, dataset_info, num_classes_for
from common.training.schedule import check_schedule, lr_for_args, total_epochs
from ms_impl.checkpoint import save_checkpoint
from ms_impl.data import (SplitSource, TrainLoader, error_message, eval_batches, eval_transform, is_own_error,
                          train_transform)
from ms_impl.distributed import DistInfo, init_distributed
from ms_impl.ema import ModelEma
from ms_impl.engine import EvalNet, NonFiniteLossError, TrainStep, collect_logits, eval_loss, top1_per_exit
from ms_impl.engine import train_one_epoch
from ms_impl.mixup import Mixup
from ms_impl.models import DVT, create_model
from ms_impl.models.factory import skip_init
from ms_impl.optim import AdamW, check_optimizer, decay_flags
from ms_impl.train_state import assign, load_train_state, save_train_state
from ms_impl.transfer import load_for_transfer

FRAMEWORK = "mindspore"
LOSS_SCALE = dict(scale_value=2.0 ** 16, scale_factor=2, scale_window=2000)  # torch GradScaler's defaults


def loss_scale_for(loss_scale) -> dict:
    """DynamicLossScaler arguments for --loss-scale: 'dynamic', or a fixed value (factor 1: it never moves,
    and the state keeps its counter, so resuming works the same way)."""
    if loss_scale == "dynamic":
        return dict(LOSS_SCALE)
    return dict(scale_value=float(loss_scale), scale_factor=1, scale_window=2 ** 30)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    ms.set_seed(seed % 2 ** 32)


def epoch_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The host-side random stream (mixup/cutmix) of one epoch on one rank."""
    return np.random.default_rng([seed % 2 ** 32, epoch, rank])


def build_model(args, num_classes: int):
    return create_model(args.model, **model_overrides(args, num_classes))


def check_args(args, device: str) -> None:
    """What this trainer cannot do, refused before any work."""
    check_optimizer(args.opt)
    check_schedule(args.sched)
    if args.amp and device == "CPU":
        raise ValueError("--amp: mixed precision needs --device Ascend or GPU (MindSpore's CPU backend has no "
                         "float16 kernels for this model); run without --amp on CPU")


@dataclass
class Optimisation:
    """Everything that updates the weights, built from the flags."""

    optimizer: AdamW
    step: TrainStep
    num_epochs: int  # --epochs + --cooldown-epochs, as timm's scheduler counts them
    ema: ModelEma | None
    mixup: Mixup | None
    loss_scaler: object | None


def build_optimisation(args, model, dist: DistInfo) -> Optimisation:
    params = model.trainable_params()
    optimizer = AdamW(params, decay_flags(model, params), betas=tuple(args.opt_betas))
    loss_scaler = None
    if args.amp:  # Ascend / GPU only (check_args)
        from ms_impl.amp import apply_amp
        apply_amp(model, args.amp_level, ms.float16)
        loss_scaler = ms.amp.DynamicLossScaler(**loss_scale_for(args.loss_scale))
    step = TrainStep(model, optimizer, exit_weights=args.exit_weights, clip_grad=args.clip_grad,
                     loss_scaler=loss_scaler, grad_reducer=dist.grad_reducer(optimizer.parameters))
    ema = None
    if args.model_ema:
        with skip_init():  # every value is copied from the model
            copy = DVT(model.config)
        if args.amp:
            from ms_impl.amp import apply_amp
            apply_amp(copy, args.amp_level, ms.float16)
        ema = ModelEma(model, copy, decay=args.model_ema_decay)
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob, args.smoothing,
                      model.num_classes)
    return Optimisation(optimizer, step, total_epochs(args.epochs, args.cooldown_epochs), ema, mixup, loss_scaler)


def restore(path: str, model, opt: Optimisation) -> tuple[int, int, int]:
    """Load a training state into model and optimisation; returns (completed epochs, updates, AdamW steps)."""
    state = load_train_state(path)
    meta = state["meta"]
    if meta["model_name"] != model.config.name:
        raise ValueError(f"--resume {path}: the state is of model {meta['model_name']!r}, not {model.config.name!r}")
    assign(dict(model.parameters_and_names()), state["model"], "model")
    assign({p.name: p for p in opt.optimizer.state_parameters()}, state["optimizer"], "optimizer state")
    if opt.ema is not None:
        if not meta["ema"]:
            raise ValueError(f"--resume {path}: the run had no EMA; drop --model-ema or start afresh")
        opt.ema.load_state(state["ema"])
    if opt.loss_scaler is not None and meta["amp"]:
        assign({"scale_value": opt.loss_scaler.scale_value, "counter": opt.loss_scaler.counter}, state["amp"],
               "loss scale")
    return int(meta["epoch"]), int(meta["num_updates"]), int(meta["opt_step"])


def gather_problems(dist: DistInfo):
    """The data checks' merge of every rank's problems: own list, plus a count of the others' (None on one process)."""
    if not dist.distributed:
        return None

    def combine(problems: list[str]) -> list[str]:
        others = int(round(dist.all_sum(len(problems)))) - len(problems)
        return problems + [f"{others} more found by the other processes (see their logs)"] * bool(others)
    return combine


def train(args, dist: DistInfo, out: Path) -> int:
    files = run_files(FRAMEWORK)
    started = time.perf_counter()
    check_args(args, dist.device)
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
    loader = TrainLoader(SplitSource(splits.train, "train"), train_transform(cfg, args), args.batch_size,
                         args.workers, args.seed, dist.rank, dist.world_size)
    calib_source = SplitSource(splits.calib, "calibration")
    steps = len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch)
    opt = build_optimisation(args, model, dist)
    start_epoch, num_updates, opt_step = 0, 0, 0
    if resume:
        start_epoch, num_updates, opt_step = restore(resume, model, opt)
        if dist.is_main:
            print(f"resumed from {resume} after epoch {start_epoch}")
            random_layers = dropout_sources(cfg)
            if random_layers:
                print(f"note: this run has dropout ({', '.join(random_layers)}); MindSpore's dropout kernels keep a "
                      "random state that cannot be saved, so it continues statistically, not bit for bit",
                      file=sys.stderr, flush=True)
    eval_model = opt.ema.module if opt.ema is not None else model
    eval_net = EvalNet(eval_model)
    log = None
    if dist.is_main:
        write_run_config(out, cfg, args, FRAMEWORK)
        log = CSVLog(out / files["log"], keep_epochs=start_epoch if resume else None)
        print(f"{cfg.name}: {sum(p.size for p in model.get_parameters()):,} parameters, {cfg.num_exits} exits; "
              f"{splits.source}: {splits.sizes()}; {opt.num_epochs} epochs x {steps} steps of "
              f"{args.batch_size} x {dist.world_size} on {dist.device} ({dist.mode} mode)", flush=True)

    def collect(source):
        return collect_logits(eval_net, eval_batches(source, eval_transform(cfg), args.eval_batch_size, args.workers),
                              args.eval_batch_size)

    calib = None
    for epoch in range(start_epoch, opt.num_epochs):
        lr = lr_for_args(epoch, args)
        model.set_train(True)
        stats = train_one_epoch(opt.step, loader.epoch(epoch), num_steps=steps, epoch=epoch,
                                num_epochs=opt.num_epochs, lr=lr, opt_step=opt_step, betas=tuple(args.opt_betas),
                                eps=args.opt_eps, weight_decay=args.weight_decay, num_classes=cfg.num_classes,
                                smoothing=args.smoothing, mixup=opt.mixup,
                                rng=epoch_rng(args.seed, epoch, dist.rank), ema=opt.ema, num_updates=num_updates,
                                world_size=dist.world_size, show_progress=dist.is_main,
                                log_interval=args.log_interval)
        num_updates, opt_step = stats["num_updates"], stats["opt_step"]
        if dist.is_main:
            calib = collect(calib_source)
            top1 = top1_per_exit(*calib)
            save_checkpoint(eval_model, out / files["checkpoint"],
                            extras={"epoch": epoch + 1, "ema": opt.ema is not None})
            save_train_state(out / files["train_state"], model=model, optimizer=opt.optimizer, ema=opt.ema,
                             loss_scaler=opt.loss_scaler, epoch=epoch + 1, num_updates=num_updates,
                             opt_step=opt_step, args=args_to_dict(args), seed=args.seed)
            log.append(epoch_row(epoch + 1, lr, stats, top1, eval_loss(*calib)))  # after the state, as torch_impl
            print(format_epoch_line(epoch + 1, opt.num_epochs, lr, stats, top1), flush=True)
        dist.barrier()
    if not dist.is_main:
        return 0  # rank 0 evaluates and writes; no collective follows, so the others may leave
    train_seconds = time.perf_counter() - started
    if calib is None:  # nothing left to train after a resume
        calib = collect(calib_source)
    test = collect(SplitSource(splits.test, "test"))
    # the paper's thresholds: training images, no augmentation
    train_outputs = collect(SplitSource(splits.train, "train")) if args.calibrate_on == "train" else None
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
        dist = init_distributed(args.device, args.mode, args.cpu_threads)
    except (RuntimeError, ValueError) as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    if dist.scheduler:  # msrun's scheduler process: the cluster has finished
        return 0
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
    except RuntimeError as err:
        if not is_own_error(err):  # a RuntimeError of a dataset pipeline wrapping a clear data error
            raise
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(main())
