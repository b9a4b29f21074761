"""Datasets and loaders over `common.training.resolve_splits`, with timm's transforms.

Training: `timm.data.create_transform(is_training=True)` with the run's RandomResizedCrop scale/ratio,
flip, colour jitter, RandAugment (`--aa`), interpolation and random erasing. Evaluation: resize to
img_size / crop_pct and centre crop, mean/std of the model config. Images come either from uint8 arrays
(digits, CIFAR) or from files (ImageFolder); a file that does not decode raises ValueError naming it.

Data order: the train loader samples with a `DistributedSampler` (also on one process) seeded with
(seed, epoch) and its loader generator is re-seeded every epoch, so an epoch's order and worker seeds
do not depend on what ran before it (resume gives the same batches).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.config import DVTConfig
from common.readers import BadFileError, read_image
from common.training.splits import SplitData


class SplitDataset(Dataset):
    """One split (arrays or file paths) -> (image tensor, label)."""

    def __init__(self, split: SplitData, transform, name: str = ""):
        if split.images is None and split.paths is None:
            raise ValueError(f"split {name!r} holds neither images nor file paths")
        self.split, self.transform, self.name = split, transform, name

    def __len__(self) -> int:
        return len(self.split)

    def load(self, index: int) -> Image.Image:
        if self.split.images is not None:
            return Image.fromarray(self.split.images[index]).convert("RGB")
        path = self.split.paths[index]
        try:
            return read_image(path)
        except BadFileError as err:
            raise ValueError(f"cannot read image {path!r} (sample {index} of the {self.name} split): expected "
                             f"{err.expected}; {err.problem}") from None

    def __getitem__(self, index: int):
        return self.transform(self.load(index)), int(self.split.labels[index])


def train_transform(cfg: DVTConfig, args):
    return create_transform(
        input_size=cfg.img_size, is_training=True, scale=tuple(args.scale), ratio=tuple(args.ratio),
        hflip=args.hflip, color_jitter=args.color_jitter or None, auto_augment=args.aa or None,
        interpolation=args.train_interpolation, mean=tuple(cfg.mean), std=tuple(cfg.std), re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount)


def eval_transform(cfg: DVTConfig):
    return create_transform(input_size=cfg.img_size, is_training=False, interpolation=cfg.interpolation,
                            mean=tuple(cfg.mean), std=tuple(cfg.std), crop_pct=cfg.crop_pct)


class TrainLoader:
    """The training DataLoader and its sampler; `epoch(e)` returns the loader set up for epoch e."""

    def __init__(self, dataset: Dataset, batch_size: int, workers: int, seed: int, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False):
        if len(dataset) // world_size < batch_size:
            raise ValueError(f"the training split has {len(dataset)} images: fewer than one batch of {batch_size} "
                             f"per process ({world_size} process(es)); lower --batch-size")
        self.seed = seed
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 drop_last=True, pin_memory=pin_memory, generator=self.generator)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 100003 + epoch)  # worker seeds of this epoch
        return self.loader


def eval_loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Sequential loader over a whole split (own generator: never touches the global RNG)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))


def labels_of(dataset: SplitDataset) -> np.ndarray:
    return np.asarray(dataset.split.labels, dtype=np.int64)


def error_message(err: BaseException) -> str:
    """The message of an error, without the worker traceback a DataLoader worker wraps around it."""
    text = str(err)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1]
    return text
