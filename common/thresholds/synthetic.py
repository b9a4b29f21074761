"""Synthetic but realistic per-exit outputs for tests and benchmarks (no model needed).

Each sample has a difficulty z ~ N(0, 1) shared by all exits; exit k has a skill a_k chosen so that its
accuracy is about `exit_accuracy[k]` (increasing: later exits are more accurate). The quality of exit k
on sample i is q = a_k - z_i + 0.5 * noise; the prediction is right when q + 0.6 * logistic noise > 0
(else a random wrong class). The predicted class gets a logit margin over the runner-up that grows with
q (softplus(1.5 q + 1) + noise), so confidence is correlated with correctness, imperfectly, as in real
models. Labels are uniform over the classes. Everything is drawn from one seeded numpy Generator.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from .outputs import ExitOutputs

# Cumulative GFLOPs of DVT T2T-ViT-12 (DESIGN.md §4); used for 3 exits unless `gflops` is given.
T2T_VIT_12_GFLOPS = (0.4725, 1.4625, 3.4975)
DEFAULT_ACCURACY = (0.62, 0.72, 0.79)


def synthetic_exit_outputs(num_samples: int, num_exits: int = 3, num_classes: int = 10, seed: int = 0,
                           exit_accuracy=None, gflops=None, model: str = "synthetic",
                           split: str = "synthetic") -> ExitOutputs:
    """Seeded synthetic `ExitOutputs` with logits (K, N, C) float32."""
    if num_samples < 1 or num_exits < 1 or num_classes < 2:
        raise ValueError(f"need N >= 1, K >= 1, C >= 2; got {num_samples}, {num_exits}, {num_classes}")
    rng = np.random.default_rng(seed)
    if exit_accuracy is None:
        exit_accuracy = (DEFAULT_ACCURACY if num_exits == 3
                         else np.linspace(0.6, 0.8, num_exits) if num_exits > 1 else (0.75,))
    acc = np.asarray(exit_accuracy, dtype=np.float64)
    if acc.shape != (num_exits,) or not ((acc > 0) & (acc < 1)).all():
        raise ValueError(f"exit_accuracy must hold {num_exits} values in (0, 1), got {acc.tolist()}")
    if gflops is None:
        gflops = T2T_VIT_12_GFLOPS if num_exits == 3 else 0.5 * 2.2 ** np.arange(num_exits)
    noise_q, noise_c = 0.5, 0.6
    spread = np.sqrt(1 + noise_q ** 2 + (noise_c * np.pi / np.sqrt(3)) ** 2)
    skill = np.array([NormalDist().inv_cdf(a) for a in acc]) * spread

    n, k, c = num_samples, num_exits, num_classes
    labels = rng.integers(0, c, size=n)
    difficulty = rng.normal(size=n)
    quality = skill[:, None] - difficulty[None, :] + noise_q * rng.normal(size=(k, n))
    right = quality + noise_c * rng.logistic(size=(k, n)) > 0
    wrong_class = (labels[None, :] + rng.integers(1, c, size=(k, n))) % c
    predicted = np.where(right, labels[None, :], wrong_class)
    logits = rng.normal(size=(k, n, c)).astype(np.float32)
    margin = np.logaddexp(0.0, 1.5 * quality + 1.0) + 0.3 * np.abs(rng.normal(size=(k, n))) + 1e-3
    runner_up = logits.max(axis=2)
    np.put_along_axis(logits, predicted[..., None], (runner_up + margin)[..., None].astype(np.float32), axis=2)
    return ExitOutputs(logits, labels, np.asarray(gflops, dtype=np.float64), model, split)
