"""The fixed sinusoid position table of T2T-ViT, computed once in numpy for both frameworks.

Angles are formed in float64 (position / 10000^(2*(j//2)/d)), sine on even and cosine on odd
channels, then rounded to float32 as the reference does, so both frameworks start from the same bits.
"""
from __future__ import annotations

import numpy as np


def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
    """(1, num_positions, dim) float32 table; row 0 belongs to the cls token."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = pos / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table = np.empty_like(angles)
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table.astype(np.float32)[None]
