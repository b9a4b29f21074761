"""`mindspore.dataset` pipelines over `common.training.resolve_splits`, with MindSpore's own vision transforms.

Source: a `GeneratorDataset` over one split, yielding (HWC uint8 RGB image, label). In-memory arrays
(digits, CIFAR) are indexed directly; files (ImageFolder trees) are decoded with PIL, so a file that
does not decode raises a ValueError naming it. (`ImageFolderDataset` is not used: the calibration
split is held out of train/ file by file by `common.training.splits`, one definition for both
frameworks, and ImageFolderDataset cannot take a file list.)

Training transforms (timm's `create_transform(is_training=True)`, op for op):
RandomResizedCrop(scale, ratio, interpolation; 'random' picks bilinear or bicubic per image) ->
RandomHorizontalFlip(--hflip) -> RandAugment / AutoAugment (--aa) or RandomColorAdjust (--color-jitter,
off when --aa is set, as in timm) -> Normalize(mean, std) -> HWC2CHW -> RandomErasing (--reprob,
per-pixel normal values = timm's 'pixel' mode). Evaluation: Resize(floor(img_size / crop_pct)) ->
CenterCrop(img_size) -> Normalize -> HWC2CHW.

Order and randomness: each epoch builds a fresh pipeline. Its `DistributedSampler(num_shards=world,
shard_id=rank, shuffle=True)` takes the seed `seed * 100003 + epoch`, the same on every rank, so the
shards are disjoint; the random transforms then run under `seed * 100003 + epoch + 7919 * (rank + 1)`.
An epoch therefore depends only on (seed, epoch, rank): a resumed run sees exactly the batches of an
uninterrupted one (with one map worker: `--workers 0` or `1`; more workers are faster but MindSpore
does not keep random transforms reproducible across them).
"""
from __future__ import annotations

import math
import re

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
import numpy as np
from mindspore.dataset.transforms import RandomChoice
from mindspore.dataset.vision import AutoAugmentPolicy, Inter

from common.config import DVTConfig
from common.readers import BadFileError, read_image
from common.training.splits import SplitData

INTERPOLATION = {"bilinear": Inter.BILINEAR, "bicubic": Inter.BICUBIC, "nearest": Inter.NEAREST,
                 "area": Inter.AREA}
RANDAUGMENT_BINS = 31  # MindSpore / torchvision magnitude bins; timm's magnitude runs 0..10


class SplitSource:
    """Random-access source of one split for GeneratorDataset: index -> (HWC uint8 RGB, int32 label)."""

    def __init__(self, split: SplitData, name: str = ""):
        if split.images is None and split.paths is None:
            raise ValueError(f"split {name!r} holds neither images nor file paths")
        self.split, self.name = split, name

    def __len__(self) -> int:
        return len(self.split)

    def load(self, index: int) -> np.ndarray:
        if self.split.images is not None:
            img = np.asarray(self.split.images[index])
            if img.ndim == 2:
                img = img[:, :, None]
            return np.ascontiguousarray(np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img, dtype=np.uint8)
        path = self.split.paths[index]
        try:
            return np.asarray(read_image(path), dtype=np.uint8)
        except BadFileError as err:
            raise ValueError(f"cannot read image {path!r} (sample {index} of the {self.name} split): expected "
                             f"{err.expected}; {err.problem}") from None

    def readers(self, workers: int) -> int:
        """Source threads: one for arrays (indexing is free), `workers` for files (PIL decodes outside the
        GIL). Reading has no randomness, so the order and content of batches do not depend on it."""
        return 1 if self.split.images is not None else max(1, workers)

    def __getitem__(self, index: int):
        return self.load(int(index)), np.int32(self.split.labels[index])


def _interpolation(name: str):
    if name not in INTERPOLATION:
        raise ValueError(f"interpolation {name!r} is not supported; expected one of {sorted(INTERPOLATION)} "
                         "or 'random'")
    return INTERPOLATION[name]


def auto_augment(spec: str, interpolation=Inter.BILINEAR):
    """timm's --aa string -> a MindSpore op. 'rand-m9-n2-...': RandAugment(num_ops=n, magnitude m of timm's
    0..10 scale mapped onto 31 bins); 'autoaug' / 'original' / 'v0': AutoAugment(IMAGENET policy).
    timm's RandAugment extras (mstd magnitude noise, inc1 increasing ops) have no MindSpore counterpart
    and are ignored."""
    parts = spec.split("-")
    if parts[0] == "rand":
        m, n = 9.0, 2
        for part in parts[1:]:
            key, value = re.match(r"([a-z]+)([\d.]*)", part).groups()
            if key == "m" and value:
                m = float(value)
            elif key == "n" and value:
                n = int(value)
        magnitude = min(RANDAUGMENT_BINS - 1, int(round(m / 10.0 * (RANDAUGMENT_BINS - 1))))
        return vision.RandAugment(num_ops=n, magnitude=magnitude, num_magnitude_bins=RANDAUGMENT_BINS,
                                  interpolation=interpolation)
    if parts[0] in ("autoaug", "original", "v0"):
        return vision.AutoAugment(policy=AutoAugmentPolicy.IMAGENET, interpolation=interpolation)
    raise ValueError(f"--aa {spec!r} is not supported by ms_impl; use 'rand-m<M>-n<N>...' (RandAugment) or "
                     "'autoaug' (AutoAugment, ImageNet policy)")


def _normalize(cfg: DVTConfig) -> list:
    return [vision.Normalize(mean=[255.0 * m for m in cfg.mean], std=[255.0 * s for s in cfg.std], is_hwc=True),
            vision.HWC2CHW()]


def train_transform(cfg: DVTConfig, args) -> list:
    """The training ops of the run's flags (see the module docstring)."""
    size = (cfg.img_size, cfg.img_size)
    scale, ratio = tuple(args.scale), tuple(args.ratio)
    if args.train_interpolation == "random":
        crop = RandomChoice([vision.RandomResizedCrop(size, scale, ratio, Inter.BILINEAR),
                             vision.RandomResizedCrop(size, scale, ratio, Inter.BICUBIC)])
        aa_interpolation = Inter.BILINEAR
    else:
        aa_interpolation = _interpolation(args.train_interpolation)
        crop = vision.RandomResizedCrop(size, scale, ratio, aa_interpolation)
    ops = [crop]
    if args.hflip > 0:
        ops.append(vision.RandomHorizontalFlip(args.hflip))
    if args.aa:
        ops.append(auto_augment(args.aa, aa_interpolation))
    elif args.color_jitter:
        cj = float(args.color_jitter)
        ops.append(vision.RandomColorAdjust(brightness=cj, contrast=cj, saturation=cj))
    ops += _normalize(cfg)
    if args.reprob > 0:
        if args.remode != "pixel" or args.recount != 1:
            raise ValueError(f"--remode {args.remode} --recount {args.recount}: ms_impl supports random erasing "
                             "with --remode pixel --recount 1 (timm's default)")
        ops.append(vision.RandomErasing(prob=args.reprob, value="random"))
    return ops


def eval_transform(cfg: DVTConfig) -> list:
    """Resize the shorter side to floor(img_size / crop_pct), centre crop, normalise (timm's eval transform)."""
    scale_size = math.floor(cfg.img_size / cfg.crop_pct)
    return [vision.Resize(scale_size, _interpolation(cfg.interpolation)), vision.CenterCrop(cfg.img_size)] + \
        _normalize(cfg)


class TrainLoader:
    """The training pipeline of one process; `epoch(e)` yields (images float32 NCHW, labels int32) numpy batches."""

    def __init__(self, source: SplitSource, transform: list, batch_size: int, workers: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        per_rank = math.ceil(len(source) / world_size)  # DistributedSampler pads the last shard
        if len(source) // world_size < batch_size:
            raise ValueError(f"the training split has {len(source)} images: fewer than one batch of {batch_size} "
                             f"per process ({world_size} process(es)); lower --batch-size")
        self.source, self.transform, self.batch_size = source, transform, batch_size
        self.workers, self.seed, self.rank, self.world_size = max(1, workers), seed, rank, world_size
        self.steps = per_rank // batch_size

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int):
        base = (self.seed * 100003 + epoch) % 2 ** 32
        ds.config.set_seed(base)
        sampler = ds.DistributedSampler(num_shards=self.world_size, shard_id=self.rank, shuffle=True)
        ds.config.set_seed((base + 7919 * (self.rank + 1)) % 2 ** 32)
        data = ds.GeneratorDataset(self.source, column_names=["image", "label"], sampler=sampler,
                                   num_parallel_workers=self.source.readers(self.workers), python_multiprocessing=False)
        data = data.map(operations=self.transform, input_columns="image", num_parallel_workers=self.workers)
        data = data.batch(self.batch_size, drop_remainder=True)
        return data.create_tuple_iterator(num_epochs=1, output_numpy=True)


def eval_batches(source: SplitSource, transform: list, batch_size: int, workers: int = 1):
    """Sequential (images, labels) numpy batches over a whole split; the last one may be smaller."""
    data = ds.GeneratorDataset(source, column_names=["image", "label"], shuffle=False,
                               num_parallel_workers=source.readers(workers), python_multiprocessing=False)
    data = data.map(operations=transform, input_columns="image", num_parallel_workers=max(1, workers))
    data = data.batch(batch_size, drop_remainder=False)
    return data.create_tuple_iterator(num_epochs=1, output_numpy=True)


_OWN_ERRORS = ("cannot read image", "no CIFAR", "ImageFolder data set", "no checkpoint at", "no such file")


def is_own_error(err: BaseException) -> bool:
    """Whether `err` is (or wraps, as a dataset pipeline does) one of this project's clear data/file errors."""
    return any(key in str(err) for key in _OWN_ERRORS)


def error_message(err: BaseException) -> str:
    """The message of an error; for errors raised inside a dataset pipeline (which MindSpore wraps in a
    RuntimeError with the worker's traceback), the line of the original error."""
    text = str(err)
    for line in reversed(text.splitlines()):  # the "SomeError: message" line, not the quoted `raise` source
        match = re.match(r"^\s*(?:[\w.]+(?:Error|Exception): )+(.*)$", line)
        if match and any(key in line for key in _OWN_ERRORS):
            return match.group(1).strip()
    if "Traceback" in text or "C++ Call Stack" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("  ", "-"))]
        return lines[-1] if lines else text
    return text
