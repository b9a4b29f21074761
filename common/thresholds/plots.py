"""Budget plots and the easy/hard grid (matplotlib, Agg canvas, no pyplot state).

- `plot_accuracy_vs_gflops`: one line per solver (expected GFLOPs, accuracy %) for the cascade, its exits
  alone as points (exit k at its cumulative GFLOPs), and single-exit backbones (other runs, e.g.
  `t2t_vit_12`) as labelled points: the paper's budgeted-classification figure.
- `plot_exit_counts`: for each solver, stacked bars of how many samples leave at each exit at every
  budget (paper Fig. 10).
- `plot_easy_hard`: test images the first exit gets right ("easy") and images only the last exit gets
  right ("hard"), each captioned with its class and confidences (paper Fig. 9).
Compute axes read in GFLOPs, or in MFLOPs when every value is below 0.1 GFLOPs (the tiny demo models), with
as many significant digits as neighbouring ticks need to differ. Files are written atomically.
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from common.atomic import atomic_write


def _save(fig: Figure, path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def compute_unit(values) -> tuple[float, str]:
    """(scale, unit) for GFLOPs values: MFLOPs (x1000) when all are below 0.1 GFLOPs, else GFLOPs."""
    values = np.asarray([v for v in np.ravel(values) if np.isfinite(v)], dtype=float)
    if values.size and values.max() < 0.1:
        return 1e3, "MFLOPs"
    return 1.0, "GFLOPs"


def tick_labels(values: Sequence[float]) -> list[str]:
    """The fewest significant digits (2 to 6) that keep neighbouring labels apart."""
    values = list(values)
    labels = [f"{v:.2g}" for v in values]
    for digits in range(2, 7):
        labels = [f"{v:.{digits}g}" for v in values]
        if all(a != b for a, b, u, w in zip(labels, labels[1:], values, values[1:]) if u != w):
            break
    return labels


def plot_accuracy_vs_gflops(path: str | os.PathLike, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                            single_exit: tuple[Sequence[float], Sequence[float]] | None = None,
                            title: str = "", grids: Sequence[int] | None = None,
                            baselines: Mapping[str, tuple[float, float]] | None = None) -> None:
    """`curves`: label -> (expected GFLOPs, accuracy in [0, 1]); `single_exit`: (GFLOPs, accuracy) of each exit
    of the cascade alone (labelled with its token grid when `grids` is given); `baselines`: name ->
    (GFLOPs, accuracy) of single-exit backbones, labelled points."""
    everything = [g for gf, _ in curves.values() for g in gf]
    everything += list(single_exit[0]) if single_exit is not None else []
    everything += [g for g, _ in (baselines or {}).values()]
    scale, unit = compute_unit(everything)
    fig = Figure(figsize=(6.8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    markers = "osd^v<>"
    for i, (label, (gf, acc)) in enumerate(curves.items()):
        order = np.argsort(gf, kind="stable")
        ax.plot(scale * np.asarray(gf)[order], 100 * np.asarray(acc)[order], marker=markers[i % len(markers)],
                markersize=3, linewidth=1.3, label=f"DVT ({label})")
    if single_exit is not None:
        gf, acc = single_exit
        ax.scatter(scale * np.asarray(gf), 100 * np.asarray(acc), marker="*", s=120, color="black", zorder=5,
                   label="DVT exits alone")
        for k, (x, y) in enumerate(zip(gf, acc)):
            text = f"exit {k + 1}" + (f" ({grids[k]}x{grids[k]})" if grids is not None else "")
            last = k == len(gf) - 1  # the rightmost point: its label goes to the left, inside the axes
            ax.annotate(text, (scale * x, 100 * y), textcoords="offset points", xytext=(-6 if last else 6, -13),
                        ha="right" if last else "left", fontsize=8)
    if baselines:
        for i, (name, (g, a)) in enumerate(baselines.items()):
            ax.scatter([scale * g], [100 * a], marker="D", s=46, color="tab:red", edgecolor="black", zorder=6,
                       label="single-exit backbones" if i == 0 else None)
            ax.annotate(name, (scale * g, 100 * a), textcoords="offset points", xytext=(6, 4), fontsize=8,
                        color="tab:red")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.margins(x=0.06, y=0.08)
    ax.set_xlabel(f"average {unit} per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_exit_counts(path: str | os.PathLike, panels: Mapping[str, tuple[Sequence[float], np.ndarray]],
                     title: str = "") -> None:
    """`panels`: label -> (budget GFLOPs (B,), samples leaving at each exit (B, K)); one panel each."""
    labels = list(panels)
    scale, unit = compute_unit([g for name in labels for g in panels[name][0]])
    width = max(7.0, 0.14 * max(len(panels[name][0]) for name in labels) + 2.8)
    fig = Figure(figsize=(width, 2.6 * len(labels) + 0.9), layout="constrained")
    axes = [fig.add_subplot(len(labels), 1, i + 1) for i in range(len(labels))]
    for ax, label in zip(axes, labels):
        gf, counts = panels[label]
        gf, counts = np.asarray(gf, dtype=float), np.asarray(counts)
        order = np.argsort(gf, kind="stable")
        gf, counts = gf[order], counts[order]
        x = np.arange(gf.shape[0])
        bottom = np.zeros(gf.shape[0])
        for k in range(counts.shape[1]):
            ax.bar(x, counts[:, k], bottom=bottom, width=0.85, label=f"exit {k + 1}")
            bottom += counts[:, k]
        step = max(1, int(np.ceil(gf.shape[0] / 12)))
        shown = x[::step]
        ax.set_xticks(shown)
        ax.set_xticklabels(tick_labels(scale * gf[shown]), fontsize=7, rotation=45 if len(shown) > 8 else 0,
                           ha="right" if len(shown) > 8 else "center")
        ax.set_ylabel("samples")
        ax.set_title(f"{label} thresholds", fontsize=9)
        ax.set_xlim(-0.7, gf.shape[0] - 0.3)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xlabel(f"budget (average {unit} per image)")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_easy_hard(path: str | os.PathLike, easy: Sequence[tuple[np.ndarray, str]],
                   hard: Sequence[tuple[np.ndarray, str]], num_exits: int, title: str = "") -> None:
    """Two rows of captioned images (uint8 (H, W, 3)): the easy group, then the hard one."""
    cols = max(len(easy), len(hard), 1)
    fig = Figure(figsize=(1.45 * cols + 0.4, 4.9), layout="constrained")
    rows = fig.subfigures(2, 1, hspace=0.04)
    groups = ((rows[0], easy, "easy: right at exit 1, most confident first (they leave at the first exit)"),
              (rows[1], hard, f"hard: wrong at exits 1-{num_exits - 1}, right only at exit {num_exits}"))
    for sub, items, heading in groups:
        sub.suptitle(heading, fontsize=9, x=0.01, ha="left")
        axes = sub.subplots(1, cols, squeeze=False)[0]
        for ax in axes:
            ax.set_axis_off()
        if not items:
            axes[0].text(0.0, 0.5, "no test image in this group", fontsize=9, transform=axes[0].transAxes)
        for ax, (img, caption) in zip(axes, items):
            ax.imshow(img, interpolation="nearest" if max(img.shape[:2]) < 96 else "antialiased")
            ax.set_title(caption, fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
