"""scikit-learn's handwritten digits (1,797 8x8 images, shipped inside the package: no download).

The demo's embedded default data: images are bilinearly upsampled to the model's input size and
replicated to three channels, so the same pipeline serves RGB data sets.
"""
from __future__ import annotations

import numpy as np


def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) 1-D bilinear interpolation matrix, half-pixel centres (torch align_corners=False)."""
    mat = np.zeros((dst, src), dtype=np.float64)
    scale = src / dst
    for i in range(dst):
        x = max((i + 0.5) * scale - 0.5, 0.0)
        x0 = min(int(np.floor(x)), src - 1)
        x1 = min(x0 + 1, src - 1)
        w1 = x - x0
        mat[i, x0] += 1.0 - w1
        mat[i, x1] += w1
    return mat


def load_digits_images(img_size: int = 32, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(N, channels, img_size, img_size) float32 images in [0, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits  # imported lazily: only the demo needs scikit-learn

    if img_size < 8:
        raise ValueError(f"digits are 8x8; img_size must be >= 8, got {img_size}")
    data = load_digits()
    images = data.images.astype(np.float64) / 16.0  # (N, 8, 8), values 0..16
    a = bilinear_matrix(8, img_size)
    up = np.einsum("hi,nij,wj->nhw", a, images, a).astype(np.float32)
    up = np.clip(up, 0.0, 1.0)
    return np.repeat(up[:, None], channels, axis=1), data.target.astype(np.int64)
