"""Batch-level Mixup / CutMix with label smoothing: timm's `Mixup` (mode 'batch') in numpy, for ms_impl/train.py.

Why not `mindspore.dataset.vision.MixUpBatch` / `CutMixBatch`: they pair each image with a random other
one, apply CutMix with a fixed probability and take one-hot labels without smoothing; timm's recipe
(which torch_impl/train.py runs and DVT's reference used) pairs image i with image B-1-i, draws per
batch whether to mix at all (`--mixup-prob`) and whether to use CutMix (`--mixup-switch-prob`), corrects
lambda to the clipped box area and smooths the targets (`--smoothing`). Writing it out keeps one recipe
across frameworks. Randomness comes from a `numpy.random.Generator` the trainer seeds per (seed, epoch,
rank), so a resumed epoch mixes exactly as the uninterrupted one.

Without mixing, `smooth_targets` gives the targets of timm's `LabelSmoothingCrossEntropy`: the soft-target
cross-entropy with (1 - s + s/K, s/K) targets equals (1 - s) * NLL + s * mean(-log p).
"""
from __future__ import annotations

import numpy as np


def smooth_targets(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """One-hot targets with label smoothing (timm's on/off values), float32 (B, K)."""
    off = smoothing / num_classes
    out = np.full((len(labels), num_classes), off, dtype=np.float32)
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0 - smoothing + off
    return out


def mixup_targets(labels: np.ndarray, num_classes: int, lam: float, smoothing: float) -> np.ndarray:
    """timm's mixup_target: lam * y + (1 - lam) * y.flip(0)."""
    y1 = smooth_targets(labels, num_classes, smoothing)
    return (y1 * lam + y1[::-1] * (1.0 - lam)).astype(np.float32)


def rand_bbox(rng: np.random.Generator, img_shape, lam: float):
    """timm's rand_bbox (no margin): a box of side ratio sqrt(1 - lam), centre uniform, clipped."""
    ratio = np.sqrt(1.0 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy, cx = int(rng.integers(0, img_h)), int(rng.integers(0, img_w))
    yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + (cut_h + 1) // 2, 0, img_h)
    xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + (cut_w + 1) // 2, 0, img_w)
    return int(yl), int(yh), int(xl), int(xh)


class Mixup:
    """`mixup(images, labels, rng) -> (images, soft targets)`; images (B, C, H, W) float32, B even."""

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, num_classes: int = 1000):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixup needs --mixup > 0 or --cutmix > 0")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.label_smoothing, self.num_classes = float(label_smoothing), int(num_classes)

    def params(self, rng: np.random.Generator) -> tuple[float, bool]:
        """(lambda, use_cutmix) of one batch (timm's _params_per_batch)."""
        lam, use_cutmix = 1.0, False
        if rng.random() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(rng.random() < self.switch_prob)
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            elif self.mixup_alpha > 0:
                alpha = self.mixup_alpha
            else:
                use_cutmix, alpha = True, self.cutmix_alpha
            lam = float(rng.beta(alpha, alpha))
        return lam, use_cutmix

    def __call__(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        if len(images) % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {len(images)}")
        lam, use_cutmix = self.params(rng)
        images = np.array(images, dtype=np.float32, copy=True)
        if lam != 1.0:
            if use_cutmix:
                yl, yh, xl, xh = rand_bbox(rng, images.shape, lam)
                images[:, :, yl:yh, xl:xh] = images[::-1, :, yl:yh, xl:xh].copy()  # flip(0) is a copy in timm
                lam = 1.0 - (yh - yl) * (xh - xl) / float(images.shape[-2] * images.shape[-1])  # correct_lam
            else:
                images = images * lam + images[::-1] * (1.0 - lam)
        return images.astype(np.float32), mixup_targets(labels, self.num_classes, lam, self.label_smoothing)
