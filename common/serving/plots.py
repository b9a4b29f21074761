"""The picture of a controlled stream: target vs realised cost, and accuracy, over the images served."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from common.atomic import atomic_write


def plot_stream(report: dict, path, *, unit: str = "GFLOPs / image", title: str = "", phases=None) -> Path:
    """Two panels: the cost (target, +-tolerance band, per batch, sliding-window and running averages, and the
    static thresholds' sliding-window average) and the accuracy over a sliding window (controlled and static),
    with the offline optimum at the realised cost. `phases`: [(images, label)] boundaries to mark."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = report["series"]
    x = np.asarray(s["images"])
    target = np.asarray(s["target"])
    tol = report["tolerance"]
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax.fill_between(x, target * (1 - tol), target * (1 + tol), color="tab:green", alpha=0.15,
                    label=f"target +-{100 * tol:.0f}%")
    ax.plot(x, target, color="tab:green", lw=1.5, label="target")
    ax.plot(x, s["realised"], color="0.6", lw=0.6, alpha=0.7, label="realised, per batch")
    ax.plot(x, s["window_average"], color="tab:blue", lw=1.8,
            label=f"realised, last {report['window_images']} images")
    ax.plot(x, s["running_average"], color="tab:purple", lw=1.5, ls="--", label="realised, since the start")
    if "static_window_average" in s and report.get("static_is_gflops", True):
        ax.plot(x, s["static_window_average"], color="tab:red", lw=1.2, alpha=0.8,
                label=f"static thresholds, last {report['window_images']} images")
    wu = report["warm_up"]["since_start"]["images"]
    ax.axvline(wu, color="tab:purple", lw=0.8, ls=":", label=f"warm-up (running average): {wu} images")
    for pos, label in phases or []:
        for a in (ax, bx):
            a.axvline(pos, color="k", lw=0.8, ls="-.")
        ax.text(pos, ax.get_ylim()[1], f" {label}", va="top", fontsize=8)
    ax.set_ylabel(unit)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.set_title(title or "Budget controller on a drifting stream")
    ax.grid(alpha=0.3)

    w = report["window_images"]
    sizes = np.diff(np.concatenate([[0], x]))
    correct = np.asarray(s["correct"], dtype=np.float64)
    from .controller import running_average

    bx.plot(x, 100 * running_average(correct / np.maximum(sizes, 1), sizes, w), color="tab:blue",
            label=f"controlled, last {w} images")
    if "static_correct" in s:
        bx.plot(x, 100 * running_average(np.asarray(s["static_correct"]) / np.maximum(sizes, 1), sizes, w),
                color="tab:red", alpha=0.8, label=f"static thresholds, last {w} images")
    bx.axhline(100 * report["accuracy"], color="tab:blue", ls="--", lw=1,
               label=f"controlled, whole stream: {100 * report['accuracy']:.2f}%")
    opt = report["offline_optimum_accuracy_at_realised_gflops"]
    bx.axhline(100 * opt, color="k", ls=":", lw=1,
               label=f"offline optimum at the same GFLOPs: {100 * opt:.2f}%")
    bx.set_ylabel("top-1 accuracy %")
    bx.set_xlabel("images served")
    bx.legend(fontsize=7, loc="lower left")
    bx.grid(alpha=0.3)
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=path.suffix.lstrip(".") or "png")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
