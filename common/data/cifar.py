"""CIFAR-10/100 from their official python-pickle folders (`cifar-10-batches-py`, `cifar-100-python`)."""
from __future__ import annotations

import os
import pickle

import numpy as np

_LAYOUT = {
    10: {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "labels": b"labels",
         "folder": "cifar-10-batches-py"},
    100: {"train": ["train"], "test": ["test"], "labels": b"fine_labels", "folder": "cifar-100-python"},
}


def _resolve_folder(root: str, num_classes: int) -> str:
    layout = _LAYOUT[num_classes]
    for candidate in (root, os.path.join(root, layout["folder"])):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in layout["train"] + layout["test"]):
            return candidate
    raise FileNotFoundError(
        f"no CIFAR-{num_classes} python folder at {root!r}: expected the files "
        f"{layout['train'] + layout['test']} in it or in {layout['folder']}/ below it "
        f"(the 'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html)")


def load_cifar(root: str, num_classes: int = 10, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images (HWC) and (N,) int64 labels of one split ('train' or 'test')."""
    if num_classes not in _LAYOUT:
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _resolve_folder(root, num_classes)
    layout = _LAYOUT[num_classes]
    images, labels = [], []
    for name in layout[split]:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            lab = np.asarray(batch[layout["labels"]], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            raise ValueError(f"corrupt CIFAR-{num_classes} batch file {path!r}: {err!r}") from err
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise ValueError(f"corrupt CIFAR-{num_classes} batch file {path!r}: data {data.shape}, "
                             f"{len(lab)} labels (expected (N, 3072) and N labels)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)
