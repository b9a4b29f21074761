"""The paper's Fig. 9 for a run: test images that are "easy" and "hard" for the cascade.

- easy: classified correctly by the first exit, most confident first: the images that leave at the first
  exit under any threshold that lets that many leave there;
- hard: wrong at every exit but the last, right at the last: only the full cascade gets them.

Trainers and evaluators hand `finalize_run` a `SplitImages` of the test split (the split whose logits it
receives, in the same order), so the run's pictures show the images the numbers came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .run_files import EASY_HARD_FILE
from .splits import SplitData

__all__ = ["EASY_HARD_FILE", "SplitImages", "Example", "easy_and_hard", "write_easy_hard"]


class SplitImages:
    """Random access to a split's images as uint8 (H, W, 3) RGB arrays, in split order, with class names.

    In-memory splits (digits, CIFAR) are indexed; file splits (ImageFolder) are decoded with Pillow on demand,
    so only the few images a picture shows are ever read.
    """

    def __init__(self, split: SplitData, class_names: Sequence[str] = ()):
        if split.images is None and split.paths is None:
            raise ValueError("a split needs in-memory images or file paths to be drawn")
        self.split = split
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.split.images is not None:
            img = np.asarray(self.split.images[i])
        else:
            from PIL import Image
            with Image.open(self.split.paths[i]) as im:
                img = np.asarray(im.convert("RGB"))
        if img.ndim == 2:
            img = img[..., None]
        return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img

    def class_name(self, c: int) -> str:
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)


@dataclass(frozen=True)
class Example:
    index: int  # position in the split
    caption: str


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def easy_and_hard(logits: np.ndarray, labels: np.ndarray, images: SplitImages, per_group: int = 8
                  ) -> tuple[list[Example], list[Example]]:
    """(easy, hard) examples of per-exit logits (K, N, C) with labels (N,), captioned with class and confidence."""
    probs = softmax(logits)
    conf, pred = probs.max(-1), probs.argmax(-1)
    correct = pred == labels[None]
    k = logits.shape[0]
    easy_idx = np.flatnonzero(correct[0])
    easy_idx = easy_idx[np.argsort(-conf[0, easy_idx], kind="stable")][:per_group]
    hard_mask = correct[-1] & ~correct[:-1].any(axis=0)
    hard_idx = np.flatnonzero(hard_mask)
    hard_idx = hard_idx[np.argsort(-conf[-1, hard_idx], kind="stable")][:per_group]
    easy = [Example(int(i), f"{images.class_name(int(labels[i]))}\nexit 1: {conf[0, i]:.2f}") for i in easy_idx]
    hard = [Example(int(i), f"{images.class_name(int(labels[i]))}\nexit 1 said {images.class_name(int(pred[0, i]))} "
                            f"({conf[0, i]:.2f})\nexit {k}: {conf[-1, i]:.2f}") for i in hard_idx]
    return easy, hard


def write_easy_hard(path, logits: np.ndarray, labels: np.ndarray, images: SplitImages, title: str = "",
                    per_group: int = 8) -> dict:
    """Draw the grid into `path` (atomically); returns how many images each group had to choose from."""
    from common.thresholds.plots import plot_easy_hard
    if len(images) != labels.shape[0]:
        raise ValueError(f"the images ({len(images)}) and the logits ({labels.shape[0]}) are not the same split")
    easy, hard = easy_and_hard(logits, labels, images, per_group)
    plot_easy_hard(path, [(images[e.index], e.caption) for e in easy], [(images[e.index], e.caption) for e in hard],
                   num_exits=logits.shape[0], title=title)
    probs_pred = logits.argmax(-1) == labels[None]
    return {"easy_available": int(probs_pred[0].sum()),
            "hard_available": int((probs_pred[-1] & ~probs_pred[:-1].any(axis=0)).sum())}
