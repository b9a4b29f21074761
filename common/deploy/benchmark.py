"""Speed of early exit over exported graphs (`tools/benchmark.py --framework onnxruntime | mindir`).

For each model and batch size, side by side in one run (`common.benchmark.time_interleaved`: rotated rounds,
medians, per-round ratios, minima and process CPU time):

- the static backbone at the finest grid (t2t_vit_12 for dvt_t2t_vit_12 ...), exported the same way: one
  graph with a dynamic batch, and one static graph of the benchmark's batch size;
- early exit over the exported cascade at each exit mixture, with a dynamic batch and with the fixed batch
  sizes `--export-sizes` under both batching policies (`batching.py`: "pad", the rows still active at an exit
  padded up to the smallest size that holds them, larger groups split; "fit", least pad rows and calls),
  plus every image to the last exit against the exported full cascade.

Printed: the measured speedup of early exit over the static backbone with the same kind of batch, the
FLOPs-predicted speedup (static GFLOPs / expected GFLOPs of the exits actually taken) and their ratio; and
the cost of padding to fixed sizes: fixed-size early exit against dynamic-batch early exit, with the pad rows
run per exit. Thresholds come from the batch's own confidences (midpoints, `thresholds_for_fractions`), so
random weights split exactly as asked. Exports go to a temporary folder unless `--export-dir` keeps them.
"""
from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from common.adaptive import counts_for_fractions, scores, thresholds_for_fractions
from common.atomic import atomic_write_text
from common.benchmark import (Measurement, encode_thresholds, mixture_label, predicted_speedup, speed_ratios,
                              static_config, time_interleaved)
from common.flops import cumulative_gflops
from common.registry import get_config

from .exporting import export_model, exporter_for
from .runner import ExportRunner, load_runner

FRAMEWORKS = {"onnxruntime": "onnx", "mindir": "mindir"}  # benchmark framework -> graph format
STATIC, STATIC_FIXED = "static_dynamic", "static_fixed"


def _export(model, folder: Path, fmt: str, sizes, log) -> Path:
    start = time.perf_counter()
    export_model(model, folder, fmt, sizes, verify=False, force=True)
    log(f"  exported {model.config.name} ({'dynamic' if sizes is None else ','.join(map(str, sizes))}) "
        f"in {time.perf_counter() - start:.0f} s")
    return folder


def prepare(framework: str, name: str, batch_sizes, export_sizes, root: Path, seed: int, log) -> dict:
    """Export the cascade (dynamic + fixed sizes) and its static backbone (dynamic + each benchmark batch)."""
    fmt = FRAMEWORKS[framework]
    exporter = exporter_for(fmt)
    root.mkdir(parents=True, exist_ok=True)
    cascade_cfg = get_config(name)
    static_cfg = static_config(cascade_cfg)
    cascade, static = exporter.random_model(cascade_cfg, seed), exporter.random_model(static_cfg, seed)
    dirs = {"cascade_dynamic": _export(cascade, root / f"{name}_dynamic", fmt, None, log),
            "cascade_fixed": _export(cascade, root / f"{name}_fixed", fmt, tuple(export_sizes), log),
            STATIC: _export(static, root / f"{static_cfg.name}_dynamic", fmt, None, log),
            STATIC_FIXED: _export(static, root / f"{static_cfg.name}_fixed", fmt, tuple(sorted(set(batch_sizes))), log)}
    return {"cascade_cfg": cascade_cfg, "static_cfg": static_cfg, "dirs": dirs}


def bench_one(prepared: dict, batch: int, mixtures, args, log) -> dict:
    cascade_cfg, static_cfg = prepared["cascade_cfg"], prepared["static_cfg"]
    runners = {k: load_runner(d, device=args.device, threads=args.threads) for k, d in prepared["dirs"].items()}
    for r in runners.values():
        r.backend.load_all()  # sessions / graph cells built before timing
    c, h, w = runners["cascade_dynamic"].manifest.input_shape
    x = np.random.RandomState(args.seed + 1).randn(batch, c, h, w).astype(np.float32)
    gflops = np.asarray(cumulative_gflops(cascade_cfg))
    s = np.stack([scores(lg, args.criterion) for lg in runners["cascade_dynamic"].run_cascade(x)])
    static_gf = cumulative_gflops(static_cfg)[-1]
    sizes = runners["cascade_fixed"].manifest.batch_sizes
    fit = ExportRunner(runners["cascade_fixed"].manifest, runners["cascade_fixed"].backend, "fit")  # same sessions

    settings, meta, last = {}, {}, {}
    settings[f"static {static_cfg.name}, dynamic batch"] = lambda: runners[STATIC].run_cascade(x)
    meta[f"static {static_cfg.name}, dynamic batch"] = dict(kind="static", role=STATIC, gflops_per_image=static_gf)
    settings[f"static {static_cfg.name}, batch {batch} graph"] = lambda: runners[STATIC_FIXED].run_cascade(x)
    meta[f"static {static_cfg.name}, batch {batch} graph"] = dict(kind="static", role=STATIC_FIXED,
                                                                 gflops_per_image=static_gf)
    settings["full cascade, dynamic batch"] = lambda: runners["cascade_dynamic"].run_cascade(x)
    meta["full cascade, dynamic batch"] = dict(kind="cascade", role="cascade", gflops_per_image=float(gflops[-1]))
    for fractions in mixtures:
        t, counts, margin = thresholds_for_fractions(s, fractions)
        target = counts_for_fractions(fractions, batch)
        note = "" if np.array_equal(counts, target) else f"asked for counts {target.tolist()}, got {counts.tolist()}"
        log(f"  mixture {mixture_label(fractions)}: counts {counts.tolist()}, closest confidence {margin:.2g} "
            "from a threshold")
        fixed = f"fixed sizes {','.join(map(str, sizes))}"
        variants = (("dynamic batch", runners["cascade_dynamic"]), (f"{fixed} (pad)", runners["cascade_fixed"]),
                    (f"{fixed} (fit)", fit))
        for batching, runner in variants:
            key = f"adaptive {mixture_label(fractions)}, {batching}"
            settings[key] = lambda r=runner, th=t, k=key: last.__setitem__(k, r.run(x, th, args.criterion))
            meta[key] = dict(kind="adaptive", role="fixed" if batching.startswith("fixed") else "dynamic",
                             target_fractions=list(fractions), thresholds=encode_thresholds(t), note=note,
                             gflops_per_image=float(counts @ gflops / batch))
    start = time.perf_counter()
    times, cpu = time_interleaved(settings, args.warmup, args.repeat,
                                  progress=lambda m: log(f"  {m} ({time.perf_counter() - start:.0f} s)"))
    measurements = {}
    for key in settings:
        m = Measurement(setting=key, kind=meta[key]["kind"], times_ms=times[key], cpu_times_ms=cpu[key],
                        batch_size=batch, gflops_per_image=meta[key]["gflops_per_image"], role=meta[key]["role"],
                        target_fractions=meta[key].get("target_fractions"), thresholds=meta[key].get("thresholds"),
                        note=meta[key].get("note", ""))
        if key in last:
            m.exit_counts = list(last[key].exit_counts)
        measurements[key] = m
    return {"batch_size": batch, "measurements": measurements, "results": last, "sizes": list(sizes),
            "info": runners["cascade_dynamic"].backend.info()}


def comparisons(run: dict, cascade_cfg, static_cfg) -> tuple[list[dict], list[dict]]:
    """(speedups over the static backbone, padding costs of fixed sizes) of one benchmark run; with every
    image sent to the last exit the speedup row also carries the host loop's overhead over the full cascade."""
    ms = run["measurements"]
    base = {m.role: m for m in ms.values() if m.kind == "static"}
    full = next(m for m in ms.values() if m.kind == "cascade")
    speed, padding = [], []
    for key, m in ms.items():
        if m.kind != "adaptive":
            continue
        b = base[STATIC_FIXED if m.role == "fixed" else STATIC]
        r = speed_ratios(b, m)
        predicted = predicted_speedup(cascade_cfg, static_cfg, m.exit_counts)
        speed.append(dict(setting=key, baseline=b.setting, measured_speedup=r["of_medians"],
                          predicted_speedup=predicted,
                          ratio=r["of_medians"] / predicted, paired_ratio=r["paired"] / predicted,
                          minima_ratio=r["of_minima"] / predicted, cpu_ratio=r["cpu"] / predicted,
                          exit_counts=list(m.exit_counts)))
        if m.role == "dynamic" and m.exit_counts[-1] == m.batch_size:
            o = speed_ratios(m, full)  # early-exit loop time / full cascade time
            speed[-1].update(overhead_vs_full_cascade=o["of_medians"] - 1, cpu_overhead_vs_full_cascade=o["cpu"] - 1)
        if m.role == "fixed":
            dyn = ms[key.split(", fixed sizes")[0] + ", dynamic batch"]
            c = speed_ratios(m, dyn)  # fixed time / dynamic time
            res = run["results"][key]
            padding.append(dict(setting=key, cost=c["of_medians"] - 1, paired_cost=c["paired"] - 1,
                                minima_cost=c["of_minima"] - 1, cpu_cost=c["cpu"] - 1,
                                padded_rows=list(res.padded_rows), graph_calls=list(res.graph_calls)))
    return speed, padding


def print_run(framework: str, name: str, run: dict, speed: list, padding: list) -> None:
    info = ", ".join(f"{k} {v}" for k, v in run["info"].items())
    print(f"\n== {framework} (exported graphs) / {name} / batch {run['batch_size']} ({info}) ==")
    print(f"{'setting':58s} {'ms/batch':>10s} {'min ms':>10s} {'CPU ms':>10s} {'img/s':>8s} {'GFLOPs/img':>10s}  exits")
    for m in run["measurements"].values():
        counts = "/".join(map(str, m.exit_counts)) if m.exit_counts else ""
        print(f"{m.setting:58s} {m.median_ms:10.1f} {m.min_ms:10.1f} {m.cpu_median_ms:10.1f} {m.images_per_s:8.1f} "
              f"{m.gflops_per_image:10.4f}  {counts}" + (f"  [{m.note}]" if m.note else ""))
    for c in speed:
        print(f"{c['setting']:58s} speedup {c['measured_speedup']:.3f}x vs {c['baseline']!r}, FLOPs-predicted "
              f"{c['predicted_speedup']:.3f}x, ratio {c['ratio']:.3f} (paired {c['paired_ratio']:.3f}, minima "
              f"{c['minima_ratio']:.3f}, CPU time {c['cpu_ratio']:.3f})"
              + (f"; host loop vs full cascade {100 * c['overhead_vs_full_cascade']:+.1f}% (CPU time "
                 f"{100 * c['cpu_overhead_vs_full_cascade']:+.1f}%)" if "overhead_vs_full_cascade" in c else ""))
    for p in padding:
        print(f"{p['setting']:58s} padding cost vs dynamic batch {100 * p['cost']:+.1f}% (paired "
              f"{100 * p['paired_cost']:+.1f}%, minima {100 * p['minima_cost']:+.1f}%, CPU time "
              f"{100 * p['cpu_cost']:+.1f}%); pad rows per exit {p['padded_rows']}, graph calls {p['graph_calls']}")


def markdown(report: dict) -> str:
    lines = ["# DVT exported-graph benchmark", "", ", ".join(f"{k}: {v}" for k, v in report["meta"].items()), ""]
    for run in report["runs"]:
        lines += [f"## {run['framework']} / {run['model']} / batch {run['batch_size']}", "",
                  f"static baseline: {run['static_model']}; fixed sizes {run['sizes']}; "
                  + ", ".join(f"{k} {v}" for k, v in run["info"].items()), "",
                  "| setting | ms / batch (median) | ms (min) | CPU ms (median) | images / s | GFLOPs / image "
                  "| exits |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for m in run["measurements"]:
            counts = "/".join(map(str, m["exit_counts"])) if m["exit_counts"] else ""
            lines.append(f"| {m['setting']} | {m['median_ms']:.1f} | {m['min_ms']:.1f} | "
                         f"{m.get('cpu_median_ms', 0):.1f} "
                         f"| {m['images_per_s']:.1f} | {m['gflops_per_image']:.4f} | {counts} |")
        lines += ["", "| early exit | baseline | measured speedup | FLOPs-predicted | ratio | ratio (paired) | "
                      "ratio (minima) | ratio (CPU time) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for c in run["speedups"]:
            lines.append(f"| {c['setting']} | {c['baseline']} | {c['measured_speedup']:.3f}x | "
                         f"{c['predicted_speedup']:.3f}x | {c['ratio']:.3f} | {c['paired_ratio']:.3f} | "
                         f"{c['minima_ratio']:.3f} | {c['cpu_ratio']:.3f} |")
        lines += ["", "| fixed sizes | cost vs dynamic batch | paired | minima | CPU time | pad rows per exit | "
                      "graph calls per exit |", "|---|---:|---:|---:|---:|---|---|"]
        for p in run["padding"]:
            lines.append(f"| {p['setting']} | {100 * p['cost']:+.1f}% | {100 * p['paired_cost']:+.1f}% | "
                         f"{100 * p['minima_cost']:+.1f}% | {100 * p['cpu_cost']:+.1f}% | {p['padded_rows']} | "
                         f"{p['graph_calls']} |")
        lines.append("")
    return "\n".join(lines)


def run_framework(framework: str, args, mixtures_for, log) -> list[dict]:
    """Every model and batch size of `args` on one exported-graph framework; returns the report's runs."""
    export_sizes = [int(v) for v in args.export_sizes.split(",") if v.strip()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="dvt-bench-export-") as tmp:
        root = Path(args.export_dir) if args.export_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in args.model_names:
            log(f"[{framework}] {name}: exporting")
            prepared = prepare(framework, name, args.batches, export_sizes, root / framework, args.seed, log)
            mixtures = mixtures_for(prepared["cascade_cfg"].num_exits, args.mixtures)
            for batch in args.batches:
                log(f"[{framework}] {name} batch {batch}")
                run = bench_one(prepared, batch, mixtures, args, log)
                speed, padding = comparisons(run, prepared["cascade_cfg"], prepared["static_cfg"])
                print_run(framework, name, run, speed, padding)
                runs.append(dict(framework=framework, model=name, static_model=prepared["static_cfg"].name,
                                 batch_size=batch, sizes=run["sizes"], info=run["info"],
                                 measurements=[m.to_dict() for m in run["measurements"].values()],
                                 speedups=speed, padding=padding))
    return runs


def write(runs: list[dict], args, argv, framework: str) -> tuple[Path, Path]:
    meta = dict(command=" ".join(["tools/benchmark.py"] + list(argv)), host=platform.node(),
                cpu=platform.processor() or platform.machine(), python=platform.python_version(),
                warmup=args.warmup, repeat=args.repeat, criterion=args.criterion, device=args.device,
                threads=args.threads or "default", date=time.strftime("%Y-%m-%d %H:%M:%S"))
    report = {"format": "dvt-benchmark-exported", "version": 1, "meta": meta, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    js = atomic_write_text(out / f"benchmark_{framework}.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    md = atomic_write_text(out / f"benchmark_{framework}.md", markdown(report))
    return js, md

