#!/usr/bin/env python
"""Evaluate a DVT checkpoint with MindSpore: per-exit top-1, per-exit outputs, thresholds, budget curve, plots,
summary.json.

    python ms_impl/evaluate.py --checkpoint runs/digits/checkpoint.ckpt --output runs/digits-eval
    python ms_impl/evaluate.py --checkpoint dvt_t2t_vit_12.ckpt --model dvt_t2t_vit_12 --device Ascend \\
        --dataset imagefolder --data-dir /data/imagenet --output runs/t2t12-eval

The mirror of torch_impl/evaluate.py. Weights: `.ckpt` or `.safetensors` in canonical, MindSpore or
reference names (convert `.pth` files with tools/convert_weights.py). The model comes from --model, else
from the config stored in the checkpoint (files written by ms_impl/train.py and the converter carry it),
else from the registry config whose parameter shapes the checkpoint fits. Loading is strict: a
checkpoint that does not fit the model exits with status 2 and the list of missing, unexpected and
mis-shaped keys. Same splits and the same `finalize_run` as training.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: put the repository, not ms_impl/, on the path
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(_here)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

import json
from pathlib import Path

from common.checkpoints import extract_state_dict, infer_configs
from common.config import DVTConfig
from common.registry import get_config, list_models
from common.training import finalize_run, parse_eval_args, resolve_splits, run_pictures, write_run_config
from common.training.output_folder import claim_eval_output
from common.training.splits import check_split_images, dataset_info, dataset_num_classes
from ms_impl.checkpoint import load_checkpoint, read_checkpoint
from ms_impl.data import SplitSource, error_message, eval_batches, eval_transform
from ms_impl.distributed import pick_device, set_cpu_threads
from ms_impl.engine import EvalNet, collect_logits
from ms_impl.models import DVT
from ms_impl.models.factory import skip_init
from ms_impl.runtime import configure

FRAMEWORK = "mindspore"


def _extra(raw: dict, key: str):
    """A non-tensor entry of a checkpoint: `.ckpt` string entries hold JSON, safetensors metadata too."""
    value = raw.get(key) if isinstance(raw, dict) else None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def resolve_config(args, raw, dataset_classes: int) -> DVTConfig:
    """--model, else the checkpoint's stored config, else the one registry config its shapes fit."""
    overrides = {"img_size": args.img_size} if args.img_size else {}
    if args.num_classes:
        overrides["num_classes"] = args.num_classes
    if args.model:
        overrides.setdefault("num_classes", dataset_classes)
        return get_config(args.model, **overrides)
    stored = _extra(raw, "config")
    if isinstance(stored, dict):
        return DVTConfig.from_dict(stored).replace(**overrides)
    shapes = {k: tuple(v.shape) for k, v in extract_state_dict(raw, use_ema=args.use_ema).tensors.items()}
    classes = overrides.pop("num_classes", dataset_classes)
    candidates = [get_config(n, num_classes=classes, **overrides) for n in list_models()]
    fits = infer_configs(shapes, candidates)
    if len(fits) != 1:
        found = ", ".join(c.name for c, _ in fits) or "none"
        raise ValueError(f"{args.checkpoint}: cannot tell the model from its parameters ({len(shapes)} tensors; "
                         f"registry configs with {classes} classes that fit: {found}); pass --model")
    return fits[0][0]


def load_model(args, cfg: DVTConfig) -> DVT:
    """The model of `cfg` with the checkpoint's weights, loaded strictly (CheckpointMismatchError otherwise)."""
    with skip_init():
        model = DVT(cfg)
    load_checkpoint(model, args.checkpoint, use_ema=args.use_ema)
    model.set_train(False)
    return model


def evaluate(args, out: Path) -> dict:
    device = pick_device(args.device)
    if args.amp and device == "CPU":
        raise ValueError("--amp: mixed precision needs --device Ascend or GPU; run without --amp on CPU")
    if device == "CPU":
        set_cpu_threads(args.cpu_threads)
    configure(device, args.mode)
    raw = read_checkpoint(args.checkpoint)
    cfg = resolve_config(args, raw, dataset_num_classes(args.dataset, args.data_dir))
    model = load_model(args, cfg)
    if args.amp:
        from ms_impl.amp import apply_amp
        apply_amp(model, "O1")
    splits = resolve_splits(args.dataset, args.data_dir, cfg.img_size, args.calib_size)
    if cfg.num_classes < splits.num_classes:
        raise ValueError(f"{args.checkpoint}: the model has {cfg.num_classes}-class heads but {splits.source} has "
                         f"{splits.num_classes} classes")
    check_split_images(splits)
    net = EvalNet(model)
    logits = {}
    wanted = [("calib", splits.calib), ("test", splits.test)]
    if args.calibrate_on == "train":  # the paper's thresholds: training images, no augmentation
        wanted.append(("train", splits.train))
    for name, split in wanted:
        batches = eval_batches(SplitSource(split, name), eval_transform(cfg), args.batch_size, args.workers)
        logits[name] = collect_logits(net, batches, args.batch_size)
    write_run_config(out, cfg, None, FRAMEWORK)
    epoch = _extra(raw, "epoch")
    return finalize_run(out, cfg, calib=logits["calib"], test=logits["test"], train=logits.get("train"),
                        framework=FRAMEWORK, mode="evaluate",
                        dataset=dataset_info(args.dataset, splits),
                        weights={"checkpoint": str(args.checkpoint), "ema": bool(args.use_ema),
                                 "epochs_completed": int(epoch) if isinstance(epoch, int) else None},
                        solvers=args.solvers, seed=args.seed,
                        files={"checkpoint": str(args.checkpoint), "train_state": None, "args": None, "log": None},
                        **run_pictures(splits, args))


def main(argv=None) -> int:
    args = parse_eval_args(argv, framework=FRAMEWORK)
    try:
        with claim_eval_output(args, FRAMEWORK) as out:
            evaluate(args, out)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # CheckpointMismatchError is a ValueError
        print(f"error: {error_message(err)}", file=sys.stderr)
        return 2
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
