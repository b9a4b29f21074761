"""Seeded calibration / test splits of stored outputs (thresholds are chosen on one, reported on the other).

Calibrate on held-out samples without augmentation (the reference used unseeded augmented training crops).
"""
from __future__ import annotations

import numpy as np


def calibration_test_split(n: int, labels=None, calib_fraction: float = 0.5, seed: int = 0):
    """Disjoint sorted index arrays (calibration, test) covering range(n).

    round(calib_fraction * n) samples go to calibration (at least 1, and at least 1 left for test).
    With `labels` the split is stratified: each class contributes its share (largest-remainder rounding,
    ties broken at random). The same (n, labels, calib_fraction, seed) always gives the same split.
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"need at least 2 samples to split into calibration and test, got n={n!r}")
    if not 0.0 < float(calib_fraction) < 1.0:
        raise ValueError(f"calib_fraction must be strictly between 0 and 1, got {calib_fraction}")
    rng = np.random.default_rng(seed)
    n_calib = int(min(max(round(calib_fraction * n), 1), n - 1))
    if labels is None:
        perm = rng.permutation(n)
        return np.sort(perm[:n_calib]), np.sort(perm[n_calib:])
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse.reshape(-1), minlength=classes.shape[0])
    ideal = sizes * (n_calib / n)
    take = np.floor(ideal).astype(np.int64)
    priority = np.lexsort((rng.random(classes.shape[0]), -(ideal - take)))  # largest remainder, random ties
    short = n_calib - int(take.sum())
    for c in priority:
        if short == 0:
            break
        if take[c] < sizes[c]:
            take[c] += 1
            short -= 1
    groups = np.split(np.argsort(inverse.reshape(-1), kind="stable"), np.cumsum(sizes)[:-1])
    calib = [rng.permutation(members)[:k] for members, k in zip(groups, take)]
    calib_idx = np.sort(np.concatenate(calib))
    mask = np.ones(n, dtype=bool)
    mask[calib_idx] = False
    return calib_idx, np.flatnonzero(mask)
