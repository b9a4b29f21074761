"""Is the last exit of a trained run at least as good as the earlier ones? A paired test, not a raw comparison.

On the digits splits (359-360 images) the exits of a trained tiny model differ by one to four images, and
which of them comes out ahead depends on the machine's float rounding during training (CI and a local AMD
machine ordered exits 2 and 3 differently from the same seed). The claim that holds is statistical: the last
exit is not *significantly* worse than any earlier exit on the same images (exact one-sided McNemar test).
"""
from __future__ import annotations

from math import comb
from pathlib import Path

import numpy as np


def mcnemar_one_sided(only_earlier: int, only_last: int) -> float:
    """P(at least `only_earlier` of the discordant images favour the earlier exit | both exits equally good)."""
    n = only_earlier + only_last
    return 1.0 if n == 0 else sum(comb(n, i) for i in range(only_earlier, n + 1)) / 2.0 ** n


def assert_last_exit_not_worse(outputs_npz: Path, alpha: float = 0.05) -> None:
    """Each earlier exit against the last one on a saved split (`*_outputs.npz`: logits (K, N, C), labels (N,))."""
    with np.load(outputs_npz) as data:
        right = data["logits"].argmax(-1) == data["labels"][None]
    for k in range(right.shape[0] - 1):
        only_earlier, only_last = int((right[k] & ~right[-1]).sum()), int((~right[k] & right[-1]).sum())
        p = mcnemar_one_sided(only_earlier, only_last)
        assert p >= alpha, (f"{outputs_npz.name}: exit {k + 1} right and the last exit wrong on {only_earlier} images, "
                            f"the reverse on {only_last} (p = {p:.3g} < {alpha})")
