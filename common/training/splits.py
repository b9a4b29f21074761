"""Train / calibration / test splits, defined once for both trainers.

Thresholds are calibrated on images the model never trained on and reported on a separate test set
(DESIGN.md §5: the reference calibrated on augmented training crops, unseeded). Splits use a fixed
seed (`SPLIT_SEED`), independent of the training seed, so runs with different seeds and both
frameworks are scored on exactly the same images.

A split holds either in-memory images (uint8, N x H x W x C) or file paths; each framework wraps
it in its own loader and transforms.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from common.data import list_image_folder, load_cifar, load_digits_images
from common.data.checks import check_image_files, check_labels, default_threads
from common.thresholds.splits import calibration_test_split

SPLIT_SEED = 0
DIGITS_FRACTIONS = (0.6, 0.2, 0.2)  # train / calibration / test
DEFAULT_CALIB_SIZE = {"cifar10": 5000, "cifar100": 5000, "imagefolder": 10000}


@dataclass
class SplitData:
    labels: np.ndarray
    images: np.ndarray | None = None  # uint8 (N, H, W, C)
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "SplitData":
        return SplitData(self.labels[idx], None if self.images is None else self.images[idx],
                         None if self.paths is None else [self.paths[i] for i in idx])


@dataclass
class DataSplits:
    train: SplitData
    calib: SplitData
    test: SplitData
    num_classes: int
    source: str
    class_names: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "calib": len(self.calib), "test": len(self.test)}


def _calib_count(calib_size, n: int, dataset: str) -> int:
    size = DEFAULT_CALIB_SIZE.get(dataset, 0) if calib_size is None else calib_size
    count = int(round(size * n)) if 0 < size < 1 else int(size)
    if not 1 <= count < n:
        raise ValueError(f"--calib-size {calib_size} leaves no training images: {count} of {n} requested")
    return count


def _hold_out(data: SplitData, count: int) -> tuple[SplitData, SplitData]:
    calib_idx, train_idx = calibration_test_split(len(data), data.labels, count / len(data), seed=SPLIT_SEED)
    return data.subset(train_idx), data.subset(calib_idx)


def digits_splits(img_size: int) -> DataSplits:
    images, labels = load_digits_images(img_size)
    hwc = np.round(images.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)
    everything = SplitData(labels, hwc)
    test_idx, rest_idx = calibration_test_split(len(labels), labels, DIGITS_FRACTIONS[2], seed=SPLIT_SEED)
    rest = everything.subset(rest_idx)
    calib_fraction = DIGITS_FRACTIONS[1] / (1.0 - DIGITS_FRACTIONS[2])
    calib_idx, train_idx = calibration_test_split(len(rest), rest.labels, calib_fraction, seed=SPLIT_SEED + 1)
    return DataSplits(rest.subset(train_idx), rest.subset(calib_idx), everything.subset(test_idx), 10,
                      "sklearn digits (embedded)", [str(i) for i in range(10)])


def resolve_splits(dataset: str, data_dir: str = "", img_size: int = 32, calib_size=None) -> DataSplits:
    """The three splits of a data set named on the command line (clear errors for bad paths and files);
    every split's labels are checked to lie in [0, num_classes)."""
    splits = _load_splits(dataset, data_dir, img_size, calib_size)
    for name, split in (("train", splits.train), ("calibration", splits.calib), ("test", splits.test)):
        check_labels(split.labels, splits.num_classes, f"the {name} split of {splits.source}")
    return splits


def check_split_images(splits: DataSplits, *, show_progress: bool = True, rank: int = 0, world_size: int = 1,
                       combine=None) -> float:
    """Read the header of every image file of every split (ImageFolder data sets; nothing to do for in-memory
    arrays) before the first epoch: `common.data.checks.check_image_files`. Returns the seconds it took."""
    paths = [p for split in (splits.train, splits.calib, splits.test) for p in (split.paths or [])]
    if not paths:
        return 0.0
    return check_image_files(paths, splits.source, threads=default_threads(), show_progress=show_progress,
                             rank=rank, world_size=world_size, combine=combine)


def _load_splits(dataset: str, data_dir: str, img_size: int, calib_size) -> DataSplits:
    if dataset == "digits":
        return digits_splits(img_size)
    if dataset in ("cifar10", "cifar100"):
        classes = 10 if dataset == "cifar10" else 100
        x, y = load_cifar(data_dir, classes, "train")
        xt, yt = load_cifar(data_dir, classes, "test")
        full = SplitData(y, x)
        train, calib = _hold_out(full, _calib_count(calib_size, len(full), dataset))
        return DataSplits(train, calib, SplitData(yt, xt), classes, f"CIFAR-{classes} at {data_dir}")
    if dataset == "imagefolder":
        train_dir, val_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
        for d in (train_dir, val_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(
                    f"ImageFolder data set {data_dir!r} needs train/ and val/ sub-folders (ImageNet layout); "
                    f"{d!r} is missing")
        samples, classes = list_image_folder(train_dir)
        val_samples, val_classes = list_image_folder(val_dir)
        if val_classes != classes:
            raise ValueError(f"{val_dir!r} has classes {val_classes[:5]}... that differ from train/ {classes[:5]}...")
        full = SplitData(np.array([c for _, c in samples], np.int64), paths=[p for p, _ in samples])
        test = SplitData(np.array([c for _, c in val_samples], np.int64), paths=[p for p, _ in val_samples])
        calib_dir = os.path.join(data_dir, "calib")
        if os.path.isdir(calib_dir):
            calib_samples, _ = list_image_folder(calib_dir)
            calib = SplitData(np.array([c for _, c in calib_samples], np.int64), paths=[p for p, _ in calib_samples])
            train = full
        else:
            train, calib = _hold_out(full, _calib_count(calib_size, len(full), dataset))
        return DataSplits(train, calib, test, len(classes), f"ImageFolder at {data_dir}", classes)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of digits, cifar10, cifar100, imagefolder")


def dataset_num_classes(dataset: str, data_dir: str = "") -> int:
    """Number of classes of a data set without loading it (ImageFolder: class folders of train/)."""
    fixed = {"digits": 10, "cifar10": 10, "cifar100": 100}
    if dataset in fixed:
        return fixed[dataset]
    if dataset == "imagefolder":
        train_dir = os.path.join(data_dir, "train")
        if not os.path.isdir(train_dir):
            raise FileNotFoundError(f"ImageFolder data set {data_dir!r} needs train/ and val/ sub-folders "
                                    f"(ImageNet layout); {train_dir!r} is missing")
        return sum(1 for e in os.scandir(train_dir) if e.is_dir())
    raise ValueError(f"unknown dataset {dataset!r}; expected one of digits, cifar10, cifar100, imagefolder")


def dataset_info(dataset: str, splits: DataSplits) -> dict:
    """The `dataset` block of summary.json (both trainers and both evaluators)."""
    return {"name": dataset, "source": splits.source, "num_classes": splits.num_classes, "sizes": splits.sizes()}


def num_classes_for(num_classes: int | None, splits: DataSplits) -> int:
    """The heads' class count: --num-classes if given (never fewer than the data has), else the data's."""
    if num_classes is None:
        return splits.num_classes
    if num_classes < splits.num_classes:
        raise ValueError(f"--num-classes {num_classes} is smaller than the {splits.num_classes} classes of "
                         f"{splits.source}")
    return num_classes
