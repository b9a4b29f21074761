"""Budget plots (matplotlib, Agg canvas, no pyplot state): accuracy vs GFLOPs, and samples per exit.

- `plot_accuracy_vs_gflops`: one line per solver (expected GFLOPs, accuracy %) plus the single-exit points
  (each exit alone at its cumulative GFLOPs), the paper's budgeted-classification figure.
- `plot_exit_counts`: for each solver, stacked bars of how many samples leave at each exit at every
  budget (paper Fig. 10).
Files are written atomically (temporary file + os.replace).
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.atomic import atomic_write


def _save(fig: Figure, path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_accuracy_vs_gflops(path: str | os.PathLike, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                            single_exit: tuple[Sequence[float], Sequence[float]] | None = None,
                            title: str = "") -> None:
    """`curves`: label -> (expected GFLOPs, accuracy in [0, 1]); `single_exit`: (GFLOPs, accuracy) per exit."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    markers = "osd^v<>"
    for i, (label, (gf, acc)) in enumerate(curves.items()):
        order = np.argsort(gf, kind="stable")
        ax.plot(np.asarray(gf)[order], 100 * np.asarray(acc)[order], marker=markers[i % len(markers)],
                markersize=3, linewidth=1.2, label=label)
    if single_exit is not None:
        gf, acc = single_exit
        ax.scatter(gf, 100 * np.asarray(acc), marker="*", s=110, color="black", zorder=5, label="single exits")
        for k, (x, y) in enumerate(zip(gf, acc)):
            ax.annotate(f"exit {k + 1}", (x, 100 * y), textcoords="offset points", xytext=(5, -12), fontsize=8)
    ax.set_xlabel("average GFLOPs per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_exit_counts(path: str | os.PathLike, panels: Mapping[str, tuple[Sequence[float], np.ndarray]],
                     title: str = "") -> None:
    """`panels`: label -> (budget GFLOPs (B,), samples leaving at each exit (B, K)); one panel each."""
    labels = list(panels)
    width = max(6.4, 0.14 * max(len(panels[name][0]) for name in labels) + 2.5)
    fig = Figure(figsize=(width, 2.4 * len(labels) + 0.8), layout="constrained")
    axes = [fig.add_subplot(len(labels), 1, i + 1) for i in range(len(labels))]
    for ax, label in zip(axes, labels):
        gf, counts = panels[label]
        gf, counts = np.asarray(gf), np.asarray(counts)
        order = np.argsort(gf, kind="stable")
        gf, counts = gf[order], counts[order]
        x = np.arange(gf.shape[0])
        bottom = np.zeros(gf.shape[0])
        for k in range(counts.shape[1]):
            ax.bar(x, counts[:, k], bottom=bottom, width=0.85, label=f"exit {k + 1}")
            bottom += counts[:, k]
        step = max(1, gf.shape[0] // 12)
        ax.set_xticks(x[::step])
        ax.set_xticklabels([f"{v:.2f}" for v in gf[::step]], fontsize=7)
        ax.set_ylabel("samples")
        ax.set_title(label, fontsize=9)
        ax.set_xlim(-0.7, gf.shape[0] - 0.3)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xlabel("budget (average GFLOPs per image)")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
