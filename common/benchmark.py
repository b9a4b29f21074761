"""Framework-neutral parts of the throughput benchmark (`tools/benchmark.py`): timing, FLOPs-predicted
speedup, static baselines, and the JSON / Markdown report.

Timing protocol (`time_interleaved`): every setting of one (framework, model, batch size) is warmed up,
then timed in rounds; each round runs every setting once, in an order rotated from round to round, so
that a slow patch of the machine (other processes, frequency changes) hits all settings alike. The
reported time is the median over rounds, and speedups are ratios of medians. Noise-robust companions are
reported next to them for shared machines: the median over rounds of the per-round ratio (both settings
timed within the same round), the ratio of the minima (interference only adds time), and the ratio of
median CPU times (`time.process_time`, user + system time of this process: with one thread it is the
wall time of an idle machine, and other processes competing for the cores do not inflate it).

Against the official PyTorch code (`--reference`): the reference repository's cascade, loaded with the
same weights, is one more setting of the same interleaved rounds, and our full cascade's time is
reported as a fraction of its time (same four measures).

FLOPs-predicted speedup of an exit mixture: static GFLOPs / expected adaptive GFLOPs, where the expected
cost is sum_k fraction_k x cumulative GFLOPs of exit k (`common.flops.cumulative_gflops`, which counts
the paper's way) and the fractions are the ones the run actually produced.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_write_text
from .config import DVTConfig
from .flops import cumulative_gflops
from .registry import get_config, list_models

REPORT_FORMAT = "dvt-benchmark"
REPORT_VERSION = 1


# ---- configs -----------------------------------------------------------------------------------
def static_config(cfg: DVTConfig, k: int | None = None) -> DVTConfig:
    """The single-exit backbone at the grid of exit `k` (default: the finest, last exit) of a cascade.

    This is the plain model DVT is compared against (T2T-ViT-12 / -14, DeiT-small at 14x14 for the reference
    cascades). A registered config with the same architecture is returned under its own name
    (e.g. "t2t_vit_12", "deit_small_grid7"); otherwise the derived config is named `<cascade>_static_grid<g>`.
    """
    k = cfg.num_exits - 1 if k is None else k
    ex = cfg.exits[k]
    derived = cfg.replace(name=f"{cfg.name}_static_grid{ex.grid}", exits=(ex,), feature_reuse=False,
                          relation_reuse=False, description=f"single-exit backbone of {cfg.name}, {ex.grid}x{ex.grid}")
    for name in list_models():
        other = get_config(name)
        if other.num_exits == 1 and other.replace(name=derived.name) == derived:  # description: compare=False
            return other
    return derived


def parse_mixture(text: str) -> tuple[float, ...]:
    """'0.6/0.25/0.15' -> (0.6, 0.25, 0.15); must be non-negative and sum to 1 (within 1e-6)."""
    try:
        values = tuple(float(v) for v in str(text).split("/"))
    except ValueError as e:
        raise ValueError(f"an exit mixture is fractions separated by '/', e.g. 0.6/0.25/0.15; got {text!r}") from e
    if any(v < 0 or not math.isfinite(v) for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"exit mixture {text!r} must be non-negative fractions that sum to 1")
    return values


def mixture_label(fractions) -> str:
    return "/".join(f"{f:g}" for f in fractions)


def expected_gflops(cfg: DVTConfig, counts) -> float:
    """Average cumulative GFLOPs per image when `counts[k]` samples leave at exit k."""
    c = np.asarray(counts, dtype=np.float64)
    return float(c @ np.asarray(cumulative_gflops(cfg)) / c.sum())


def predicted_speedup(cascade: DVTConfig, static: DVTConfig, counts) -> float:
    """FLOPs-predicted speedup of the cascade at exit counts `counts` over the static model."""
    return cumulative_gflops(static)[-1] / expected_gflops(cascade, counts)


# ---- timing ------------------------------------------------------------------------------------
def time_interleaved(settings: dict[str, Callable[[], object]], warmup: int, repeat: int,
                     sync: Callable[[object], None] = lambda out: None,
                     progress: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """(wall, cpu): milliseconds of every call of every setting, timed in `repeat` rotated rounds after
    `warmup` rounds; `wall[name][r]` and `cpu[name][r]` belong to round r.

    `sync(output)` must block until the output is computed (device synchronisation); it is inside the timing.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    names = list(settings)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            sync(settings[name]())
            elapsed, elapsed_cpu = (time.perf_counter() - start) * 1e3, (time.process_time() - start_cpu) * 1e3
            if r >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
        if progress:
            progress(f"round {r + 1}/{warmup + repeat}" + (" (warm-up)" if r < warmup else ""))
    return wall, cpu


# Roles of the settings a comparison looks up.
BASELINE = "baseline"  # the static backbone at the finest grid, plain forward (explicit attention)
BASELINE_FAST = "baseline_fast"  # the same model through the adaptive path (fast kernels: fused attention)
CASCADE = "cascade"  # the full cascade forward (every exit on every sample)
BASELINE_VARIANT = "baseline_fast:"  # + variant: the fast-kernel baseline run the same way ("compiled", ...)
REFERENCE = "reference"  # the official PyTorch code's cascade on the same weights (every exit on every sample)


@dataclass
class Measurement:
    """One timed setting of one (framework, device, model, batch size)."""

    setting: str  # e.g. "static t2t_vit_12", "full cascade", "adaptive 0.6/0.25/0.15"
    kind: str  # "static" | "cascade" | "adaptive" | "reference"
    times_ms: list
    batch_size: int
    gflops_per_image: float  # FLOPs-counted cost (the expected cost of the exits taken, for adaptive settings)
    role: str = ""  # BASELINE | BASELINE_FAST | BASELINE_VARIANT + variant | CASCADE | REFERENCE | ""
    fast: bool | None = None  # adaptive path with fast kernels (fused attention, deferred relations)
    variant: str = ""  # how the fast path's stages run: "" (eager), "compiled" (torch.compile), "cuda graphs"
    first_call_s: float | None = None  # seconds of the very first call (compiling / capturing, for variants)
    exit_counts: list | None = None  # adaptive: samples leaving at each exit (as run)
    target_fractions: list | None = None  # adaptive: the mixture asked for
    thresholds: list | None = None  # adaptive: the thresholds used ("inf"/"-inf" as strings)
    cpu_times_ms: list | None = None  # process CPU time of each timed call (all threads)
    note: str = ""

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.times_ms))

    @property
    def min_ms(self) -> float:
        return float(min(self.times_ms))

    @property
    def cpu_median_ms(self) -> float:
        return float(statistics.median(self.cpu_times_ms)) if self.cpu_times_ms else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.batch_size / (self.median_ms / 1e3)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(median_ms=self.median_ms, min_ms=self.min_ms, images_per_s=self.images_per_s)
        if self.cpu_times_ms:
            d["cpu_median_ms"] = self.cpu_median_ms
        return d


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN


def _fmt(v, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v * scale, spec)


def speed_ratios(slow: Measurement, fast: Measurement) -> dict:
    """How many times faster `fast` is than `slow`: ratio of medians, median of per-round ratios, ratio of minima."""
    rounds = [a / b for a, b in zip(slow.times_ms, fast.times_ms)]
    cpu = slow.cpu_median_ms / fast.cpu_median_ms if slow.cpu_times_ms and fast.cpu_times_ms else float("nan")
    return dict(of_medians=slow.median_ms / fast.median_ms, paired=float(statistics.median(rounds)),
                of_minima=slow.min_ms / fast.min_ms, cpu=cpu)


def encode_thresholds(thresholds) -> list:
    return [v if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in map(float, thresholds)]


@dataclass
class RunResult:
    """All settings of one (framework, device, model, batch size), plus derived speedups."""

    framework: str
    device: str
    model: str
    static_model: str
    batch_size: int
    measurements: list = field(default_factory=list)
    info: dict = field(default_factory=dict)  # threads, mode, amp, versions...

    def by_role(self, role: str) -> Measurement | None:
        return next((m for m in self.measurements if m.role == role), None)

    def comparisons(self, cascade: DVTConfig, static: DVTConfig) -> list[dict]:
        """Per adaptive setting: measured speedup over the static backbone at the finest grid run with the
        same kind of kernels (fast: the static model through the adaptive path, where its only exit needs no
        logits and uses fused attention; default: its plain forward), the FLOPs-predicted speedup and their
        ratio."""
        rows = []
        for m in self.measurements:
            if m.kind != "adaptive":
                continue
            base = self.by_role(BASELINE_VARIANT + m.variant if m.variant else BASELINE_FAST if m.fast else BASELINE)
            if base is None:
                continue
            measured = speed_ratios(base, m)
            predicted = predicted_speedup(cascade, static, m.exit_counts)
            rows.append(dict(setting=m.setting, baseline=base.setting, measured_speedup=measured["of_medians"],
                             predicted_speedup=predicted, ratio=measured["of_medians"] / predicted,
                             paired_ratio=measured["paired"] / predicted,
                             minima_ratio=measured["of_minima"] / predicted,
                             cpu_speedup=_finite(measured["cpu"]), cpu_ratio=_finite(measured["cpu"] / predicted),
                             exit_counts=list(m.exit_counts)))
        return rows

    def overheads(self) -> list[dict]:
        """Adaptive path with every sample sent to the last exit vs the full cascade forward."""
        full = self.by_role(CASCADE)
        rows = []
        for m in self.measurements:
            if full is not None and m.kind == "adaptive" and m.exit_counts is not None \
                    and m.exit_counts[-1] == m.batch_size:
                r = speed_ratios(m, full)  # adaptive time / full cascade time
                rows.append(dict(setting=m.setting, overhead=r["of_medians"] - 1.0, paired_overhead=r["paired"] - 1.0,
                                 minima_overhead=r["of_minima"] - 1.0, cpu_overhead=_finite(r["cpu"] - 1.0)))
        return rows

    def reference_comparison(self) -> dict | None:
        """Our full cascade's time as a fraction of the official code's (same weights, same rounds)."""
        ours, ref = self.by_role(CASCADE), self.by_role(REFERENCE)
        if ours is None or ref is None:
            return None
        r = speed_ratios(ours, ref)  # ours / reference: "ours takes this fraction of its time"
        return dict(setting=ours.setting, reference=ref.setting, time_fraction=r["of_medians"],
                    paired_time_fraction=r["paired"], minima_time_fraction=r["of_minima"],
                    cpu_time_fraction=_finite(r["cpu"]))


# ---- report ------------------------------------------------------------------------------------
def report_dict(results: list[tuple[RunResult, DVTConfig, DVTConfig]], meta: dict) -> dict:
    runs = []
    for run, cascade, static in results:
        runs.append(dict(framework=run.framework, device=run.device, model=run.model, static_model=run.static_model,
                         batch_size=run.batch_size, info=run.info,
                         gflops=dict(cascade=cumulative_gflops(cascade), static=cumulative_gflops(static)[-1]),
                         measurements=[m.to_dict() for m in run.measurements],
                         comparisons=run.comparisons(cascade, static), overheads=run.overheads(),
                         reference=run.reference_comparison()))
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "meta": meta, "runs": runs}


def markdown_report(report: dict) -> str:
    lines = ["# DVT throughput benchmark", ""]
    meta = report.get("meta", {})
    if meta:
        lines += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    for run in report["runs"]:
        info = ", ".join(f"{k} {v}" for k, v in run["info"].items())
        lines += [f"## {run['framework']} / {run['device']} / {run['model']} / batch {run['batch_size']}",
                  "", f"static baseline: {run['static_model']}; {info}", "",
                  "| setting | ms / batch (median) | ms (min) | CPU ms (median) | images / s | GFLOPs / image "
                  "| exits (counts) | runs |", "|---|---:|---:|---:|---:|---:|---|---:|"]
        for m in run["measurements"]:
            counts = "/".join(str(c) for c in m["exit_counts"]) if m["exit_counts"] is not None else ""
            lines.append(f"| {m['setting']} | {m['median_ms']:.1f} | {m['min_ms']:.1f} | "
                         f"{_fmt(m.get('cpu_median_ms'), '.1f')} | {m['images_per_s']:.1f} | "
                         f"{m['gflops_per_image']:.4f} | {counts} | {len(m['times_ms'])} |")
        if run["comparisons"]:
            lines += ["", "| adaptive setting | baseline | measured speedup | FLOPs-predicted | ratio | "
                          "ratio (paired rounds) | ratio (minima) | ratio (CPU time) |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            for c in run["comparisons"]:
                lines.append(f"| {c['setting']} | {c['baseline']} | {c['measured_speedup']:.3f}x | "
                             f"{c['predicted_speedup']:.3f}x | {c['ratio']:.3f} | {c['paired_ratio']:.3f} | "
                             f"{c['minima_ratio']:.3f} | {_fmt(c['cpu_ratio'], '.3f')} |")
        if run["overheads"]:
            lines += [""] + [f"- {o['setting']}: {100 * o['overhead']:+.1f}% vs the full cascade (paired rounds "
                             f"{100 * o['paired_overhead']:+.1f}%, minima {100 * o['minima_overhead']:+.1f}%, "
                             f"CPU time {_fmt(o['cpu_overhead'], '+.1f', 100)}%)" for o in run["overheads"]]
        ref = run.get("reference")
        if ref:
            lines += ["", f"- {ref['setting']} takes {ref['time_fraction']:.3f} of the time of {ref['reference']} "
                          f"(paired rounds {ref['paired_time_fraction']:.3f}, "
                          f"minima {ref['minima_time_fraction']:.3f}, "
                          f"CPU time {_fmt(ref['cpu_time_fraction'], '.3f')})"]
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path, stem: str = "benchmark") -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` atomically into `out_dir` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = atomic_write_text(out / f"{stem}.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    md = atomic_write_text(out / f"{stem}.md", markdown_report(report))
    return js, md
