"""Training recipes: the reference ImageNet recipe per model and the recipe of the embedded demo.

Reference values come from the public DVT training script and its README commands (8 GPUs; the
batch size is per GPU, the learning rate is for the whole 8-GPU batch and is not rescaled
automatically — see README for scaling to other world sizes).
"""
from __future__ import annotations

import dataclasses

from common.config import DVTConfig
from common.registry import get_config, is_tiny

# Shared by every reference run (timm's ImageNet recipe as used by T2T-ViT / DVT).
_IMAGENET_COMMON = dict(
    dataset="imagefolder", epochs=300, opt="adamw", opt_eps=1e-8, opt_betas=(0.9, 0.999), sched="cosine",
    warmup_epochs=20, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=10, aa="rand-m9-mstd0.5-inc1",
    reprob=0.25, remode="pixel", recount=1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
    smoothing=0.1, train_interpolation="random", color_jitter=0.4, hflip=0.5, scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3), drop=0.0, drop_path=0.1, token_drop=None, model_ema=True, model_ema_decay=0.99996, amp=True,
    clip_grad=None, calib_size=10000,
)

REFERENCE_RECIPES: dict[str, dict] = {
    # README: --b 128 --lr 2e-3 --weight-decay .03 --amp (8 GPUs)
    "t2t_vit_12": dict(_IMAGENET_COMMON, batch_size=128, lr=2e-3, weight_decay=0.03),
    # README: --b 64 --lr 5e-4 --weight-decay .05 --amp (8 GPUs)
    "t2t_vit_14": dict(_IMAGENET_COMMON, batch_size=64, lr=5e-4, weight_decay=0.05),
    # DeiT-small recipe: 1024 images per step at lr 5e-4 * 1024 / 512.
    "deit_small": dict(_IMAGENET_COMMON, batch_size=128, lr=1e-3, weight_decay=0.05),
}
# Other T2T sizes follow T2T-ViT-14's recipe (the T2T-ViT paper trains them alike).
_DEFAULT_REFERENCE = "t2t_vit_14"

# Embedded digits: 32x32 grey digits, ~1,100 training images; about two minutes on 2 CPU cores.
DIGITS_RECIPE = dict(
    dataset="digits", epochs=30, batch_size=64, opt="adamw", opt_eps=1e-8, opt_betas=(0.9, 0.999), lr=2e-3,
    weight_decay=0.05, sched="cosine", warmup_epochs=2, warmup_lr=1e-5, min_lr=1e-5, cooldown_epochs=0,
    aa=None, reprob=0.0, remode="pixel", recount=1, mixup=0.0, cutmix=0.0, mixup_prob=1.0,
    mixup_switch_prob=0.5, smoothing=0.1, train_interpolation="bilinear", color_jitter=0.0, hflip=0.0,
    scale=(0.75, 1.0), ratio=(0.9, 1.1), drop=0.0, drop_path=0.0, model_ema=False, model_ema_decay=0.999,
    token_drop=0.0,  # no dropout anywhere (not even the Performer's 0.1): every run resumes bit for bit
    amp=False, clip_grad=None, calib_size=None,
    workers=0,  # in-memory 32x32 images: worker processes cost more than they save on 2 cores
)


def recipe_for(model_name: str) -> dict:
    """Default hyper-parameters for a registered model (tiny models get the digits recipe)."""
    if is_tiny(model_name):
        return dict(DIGITS_RECIPE)
    for key, recipe in REFERENCE_RECIPES.items():
        if key in model_name:
            return dict(recipe)
    return dict(REFERENCE_RECIPES[_DEFAULT_REFERENCE])


def with_token_dropout(cfg: DVTConfig, rate: float) -> tuple:
    """`cfg.exits` with the dropout inside the T2T Performer token layers set to `rate` (patch tokenizers have none)."""
    return tuple(dataclasses.replace(e, tokenizer=dataclasses.replace(e.tokenizer, dropout=float(rate)))
                 if hasattr(e.tokenizer, "dropout") else e for e in cfg.exits)


def model_overrides(args, num_classes: int) -> dict:
    """The `create_model` overrides of a training run: classes, --drop, --drop-path, --img-size, --token-drop."""
    overrides = dict(num_classes=num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path)
    if args.img_size:
        overrides["img_size"] = args.img_size
    if getattr(args, "token_drop", None) is not None:
        overrides["exits"] = with_token_dropout(get_config(args.model), args.token_drop)
    return overrides


def dropout_sources(cfg: DVTConfig) -> list[str]:
    """What draws random numbers inside the model in training mode (empty: the forward is deterministic)."""
    found = [f"{name} {rate:g}" for name, rate in (("--drop", cfg.drop_rate), ("--drop-path", cfg.drop_path_rate),
                                                  ("attention dropout", cfg.attn_drop_rate))
             if rate]
    token = sorted({e.tokenizer.dropout for e in cfg.exits if getattr(e.tokenizer, "dropout", 0.0)})
    if token:
        found.append(f"--token-drop {'/'.join(f'{r:g}' for r in token)} (T2T Performer token layers)")
    return found
