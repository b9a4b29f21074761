#!/usr/bin/env python
"""Throughput and latency of DVT's real early exit, torch and MindSpore, against the static backbone.

    python tools/benchmark.py [--framework torch,mindspore] [--device cpu|cuda|Ascend]
        [--models dvt_t2t_vit_12,dvt_t2t_vit_14] [--batch-sizes 1,16,64] [--mixtures 0.6/0.25/0.15,...]
        [--kernels fast,default] [--warmup 1 --repeat 5] [--threads N] [--amp] [--ms-mode pynative|graph]
        [--out outputs/benchmark]

For every framework, model and batch size it times (median over `--repeat` rounds after `--warmup`
rounds, settings interleaved round by round: `common.benchmark.time_interleaved`):

- each single-exit backbone at the grids of the cascade (e.g. t2t_vit_12_grid7 / _grid10 / t2t_vit_12),
  plain forward; the finest one is the static baseline the paper compares DVT against. It is timed a
  second time through the adaptive entry point ("fast kernels"): a single exit needs no attention
  logits for a later exit, so it uses the fused attention kernel, exactly like the cascade's last exit.
- the full cascade forward (every exit on every sample): regressions show here.
- adaptive inference (`adaptive_forward`) at each exit mixture, with fast kernels (fused attention in the
  last exit, matmul relation reuse) and, unless `--kernels fast`, with the default kernels of the
  FLOPs-counted forward. A mixture is turned into thresholds from the model's own confidences on the
  benchmark batch (`common.adaptive.thresholds_for_fractions`: midpoints between neighbouring
  confidences, so the split is exact for random-weight models too), and the exit counts the run
  actually produced are recorded and used. The mixture 0/.../1 (every sample to the last exit) is
  always added: its time against the full cascade is the overhead of the adaptive path.

For each adaptive setting it prints the measured speedup over the static baseline with the same kind
of kernels (fast vs fast, default vs default), the FLOPs-predicted speedup (static GFLOPs / expected adaptive GFLOPs,
`common.flops`) and their ratio, and writes `benchmark.json` and `benchmark.md` (atomically) to `--out`.

Threads: `--threads N` calls torch.set_num_threads(N) / MindSpore's
`device_context.cpu.op_tuning.threads_num(N)`; default: each framework's own default (all cores).
On a machine shared with other jobs, 1 thread gives far steadier numbers than oversubscribed OpenMP,
and the CPU-time columns (process time of the benchmark) are then the contention-free measure.
Torch timings run under torch.inference_mode(); `--amp` adds autocast (float16 on CUDA, bfloat16 on CPU)
for torch and the 'O1' policy of ms_impl.amp (float16) for MindSpore. Random weights unless
`--checkpoint` (one model). Benchmarks are measurements, never test assertions.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

from common import get_config  # noqa: E402
from common.adaptive import counts_for_fractions, scores, thresholds_for_fractions  # noqa: E402
from common.benchmark import (BASELINE, BASELINE_FAST, BASELINE_VARIANT, CASCADE, REFERENCE,  # noqa: E402
                              Measurement, RunResult, encode_thresholds, mixture_label, parse_mixture, report_dict,
                              static_config, time_interleaved, write_report)
from common.exits import per_exit  # noqa: E402
from common.flops import cumulative_gflops  # noqa: E402

DEFAULT_MIXTURES = {2: ("0.6/0.4",), 3: ("0.6/0.25/0.15",), 4: ("0.5/0.25/0.15/0.1",)}


class CheckpointProblem(Exception):
    """A --checkpoint that does not load into the model (reported with exit status 2)."""


# ---- frameworks --------------------------------------------------------------------------------
class TorchBackend:
    name = "torch"

    def __init__(self, device: str, threads: int | None, amp: bool, mode: str | None = None):
        import torch

        from torch_impl.models import DVT, adaptive_forward
        self.torch, self.DVT, self.adaptive_forward = torch, DVT, adaptive_forward
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if device.lower() in ("cuda", "gpu") else device.lower())
        self.amp_dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if amp else None

    def info(self) -> dict:
        torch = self.torch
        out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
               "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off"}
        if self.device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out

    def build(self, cfg, seed: int, checkpoint=None):
        self.torch.manual_seed(seed)
        model = self.DVT(cfg)
        if checkpoint:
            from torch_impl import load_checkpoint
            load_checkpoint(model, checkpoint)
        return model.eval().to(self.device)

    def images(self, cfg, batch: int, seed: int):
        g = self.torch.Generator().manual_seed(seed)
        return self.torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g).to(self.device)

    @contextlib.contextmanager
    def context(self):
        torch = self.torch
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            yield

    def forward(self, model, x):
        return model(x)

    def adaptive(self, model, x, thresholds, fast: bool, **options):
        return self.adaptive_forward(model, x, thresholds, fast=fast, **options)

    def exit_logits(self, model, x) -> np.ndarray:
        return np.stack([lg.float().cpu().numpy() for lg in per_exit(model(x))])

    def sync(self, _out) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def stage_graphs(self):
        """A fresh `StageGraphs` (CUDA graphs per exit stage and padded batch size) for one setting."""
        from torch_impl.cuda_graphs import StageGraphs, cuda_capture, eager_capture
        return StageGraphs(capture=cuda_capture if self.device.type == "cuda" else eager_capture)

    def reference(self, name: str, cascade, repo: str):
        """The official code's model for `name` with `cascade`'s weights (None if it has no counterpart)."""
        import tempfile

        from torch_impl.checkpoint import named_state_dict
        from torch_impl.official import OFFICIAL_MODELS, build_official, load_official
        if name not in OFFICIAL_MODELS:
            return None
        if getattr(self, "_official", None) is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="dvt-official-")  # removed when the run ends
            self._official = load_official(repo, self._scratch.name)
        model = build_official(name, self._official)
        model.load_state_dict(named_state_dict(cascade, "reference"), strict=True)
        return model.eval().to(self.device)


class MindSporeBackend:
    name = "mindspore"

    def __init__(self, device: str, threads: int | None, amp: bool, mode: str | None = None):
        import mindspore as ms

        import ms_impl
        from ms_impl.models import DVT, adaptive_forward
        self.ms, self.ms_impl, self.DVT, self.adaptive_forward = ms, ms_impl, DVT, adaptive_forward
        from ms_impl.runtime import device_target
        try:
            ms_impl.configure(device=device)
        except RuntimeError:  # the runtime already started (an earlier user in this process): fine if same device
            if ms.get_context("device_target") != device_target(device):
                raise
        self.mode = mode or "pynative"
        ms_impl.configure(mode=self.mode)
        if threads:
            from mindspore.device_context.cpu.op_tuning import threads_num
            threads_num(threads)
        self.threads = threads
        self.amp = amp

    def info(self) -> dict:
        return {"mindspore": self.ms.__version__, "mode": self.mode,
                "threads": self.threads or "default", "amp": "O1 float16" if self.amp else "off"}

    def build(self, cfg, seed: int, checkpoint=None):
        self.ms.set_seed(seed)
        model = self.DVT(cfg)
        if checkpoint:
            self.ms_impl.load_checkpoint(model, checkpoint)
        model.set_train(False)
        if self.amp:
            self.ms_impl.apply_amp(model, "O1")
        return model

    def images(self, cfg, batch: int, seed: int):
        x = np.random.RandomState(seed).randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
        return self.ms.Tensor(x.astype(np.float32))

    def context(self):
        return contextlib.nullcontext()

    def forward(self, model, x):
        return model(x)

    def adaptive(self, model, x, thresholds, fast: bool, **options):
        if options:
            raise ValueError(f"the MindSpore benchmark has no options {sorted(options)}")
        return self.adaptive_forward(model, x, thresholds, fast=fast)

    def exit_logits(self, model, x) -> np.ndarray:
        return np.stack([lg.asnumpy().astype(np.float32) for lg in per_exit(model(x))])

    def sync(self, out) -> None:
        """Wait for the outputs (PYNATIVE may still be running queued kernels): copy every logits tensor out."""
        for t in (out.logits,) if hasattr(out, "logits") else per_exit(out):
            t.asnumpy()


BACKENDS = {"torch": TorchBackend, "mindspore": MindSporeBackend}
EXPORTED = ("onnxruntime", "mindir")  # exported graphs: common.deploy.benchmark


# ---- one (framework, model, batch size) ------------------------------------------------------
def _keep(store: dict, key: str, out):
    store[key] = out
    return out


def bench_model(backend, name: str, batch: int, mixtures, args, log) -> tuple[RunResult, object, object]:
    cascade_cfg = get_config(name)
    k_exits = cascade_cfg.num_exits
    statics = [static_config(cascade_cfg, k) for k in range(k_exits)]
    finest = statics[-1]
    try:
        cascade = backend.build(cascade_cfg, args.seed, args.checkpoint)
    except (ValueError, FileNotFoundError) as err:  # BadFileError, CheckpointMismatchError, wrong format
        if not args.checkpoint:
            raise
        text = str(err)
        raise CheckpointProblem(text if text.startswith(str(args.checkpoint)) else f"--checkpoint {args.checkpoint}: "
                                f"{text}") from None
    x = backend.images(cascade_cfg, batch, args.seed + 1)
    gflops = cumulative_gflops(cascade_cfg)
    want = args.setting_kinds.__contains__

    settings, meta, last = {}, {}, {}  # last: the latest output of each adaptive setting
    with backend.context():
        if want("static"):
            static_models = {cfg.name: backend.build(cfg, args.seed) for cfg in statics}
            for cfg in statics:
                m = static_models[cfg.name]
                setting = f"static {cfg.name}"
                settings[setting] = lambda m=m: backend.forward(m, x)
                meta[setting] = dict(kind="static", gflops_per_image=cumulative_gflops(cfg)[-1],
                                     role=BASELINE if cfg is finest else "")
            m = static_models[finest.name]
            setting = f"static {finest.name}, fast kernels"
            settings[setting] = lambda m=m: backend.adaptive(m, x, [], True)
            meta[setting] = dict(kind="static", gflops_per_image=cumulative_gflops(finest)[-1], role=BASELINE_FAST,
                                 fast=True)
            for variant, options in _stage_variants(backend, args):
                setting = f"static {finest.name}, fast kernels, {variant}"
                settings[setting] = lambda m=m, o=options(): backend.adaptive(m, x, [], True, **o)
                meta[setting] = dict(kind="static", gflops_per_image=cumulative_gflops(finest)[-1],
                                     role=BASELINE_VARIANT + variant, fast=True, variant=variant)
        if want("cascade"):
            settings["full cascade"] = lambda: backend.forward(cascade, x)
            meta["full cascade"] = dict(kind="cascade", gflops_per_image=gflops[-1], role=CASCADE)
        if want("reference"):
            _add_reference(backend, name, cascade, x, args, settings, meta, gflops[-1], log)

        if want("adaptive"):
            s = np.stack([scores(lg, args.criterion) for lg in backend.exit_logits(cascade, x)])
            for fractions in mixtures:
                thresholds, counts, margin = thresholds_for_fractions(s, fractions)
                target = counts_for_fractions(fractions, batch)
                note = ("" if np.array_equal(counts, target)
                        else f"asked for counts {target.tolist()}, got {counts.tolist()}")
                for label, fast, variant, options in _adaptive_variants(backend, args):
                    setting = f"adaptive {mixture_label(fractions)}{label}"
                    settings[setting] = lambda th=thresholds, f=fast, o=options, key=setting: _keep(
                        last, key, backend.adaptive(cascade, x, th, f, **o))
                    meta[setting] = dict(kind="adaptive", fast=fast, variant=variant,
                                         target_fractions=list(fractions), thresholds=encode_thresholds(thresholds),
                                         note=note, gflops_per_image=float(counts @ np.asarray(gflops) / batch))
                log(f"  mixture {mixture_label(fractions)}: counts {counts.tolist()}, thresholds "
                    f"{[f'{v:.6g}' for v in thresholds]}, closest confidence {margin:.2g} from a threshold")

        first_call = {}
        for setting, m in meta.items():  # compiling / capturing happens here, outside the timed rounds
            if m.get("variant"):
                start = time.perf_counter()
                backend.sync(settings[setting]())
                first_call[setting] = time.perf_counter() - start
                log(f"  {setting}: first call {first_call[setting]:.1f} s ({m['variant']}: prepares every exit stage)")
        start = time.perf_counter()
        times, cpu_times = time_interleaved(settings, args.warmup, args.repeat, backend.sync,
                                            progress=lambda msg: log(f"  {msg} ({time.perf_counter() - start:.0f} s)"))
        run = RunResult(backend.name, args.device, name, finest.name, batch, info=backend.info())
        for setting in settings:
            m = Measurement(setting=setting, times_ms=times[setting], cpu_times_ms=cpu_times[setting], batch_size=batch,
                            first_call_s=first_call.get(setting), **meta[setting])
            if m.kind == "adaptive":
                m.exit_counts = list(last[setting].exit_counts)  # the split the timed calls took
            if m.first_call_s is not None:
                m.note = "; ".join(filter(None, [m.note, f"first call {m.first_call_s:.1f} s"]))
            run.measurements.append(m)
    return run, cascade_cfg, finest


def _stage_variants(backend, args) -> list[tuple[str, object]]:
    """(variant, options factory) for the ways of running the fast path's stages asked for (torch only).

    A factory, because CUDA graphs are kept per setting: each setting captures its own."""
    if backend.name != "torch":
        return []
    out = []
    if args.compile:
        out.append(("compiled", lambda: dict(compile=True)))
    if args.cuda_graphs:
        out.append(("cuda graphs", lambda: dict(graphs=backend.stage_graphs())))
    return out


def _adaptive_variants(backend, args) -> list[tuple[str, bool, str, dict]]:
    """(setting label suffix, fast, variant, options of backend.adaptive) for every adaptive variant asked for."""
    out = []
    for fast in args.fast_variants:
        if not fast:
            out.append((", default kernels", False, "", {}))
            continue
        for relations in args.relation_modes if backend.name == "torch" else ("deferred",):
            options = {} if relations == "deferred" else dict(relations=relations)
            out.append(("" if relations == "deferred" else f", relations {relations}", True, "", options))
        for variant, options in _stage_variants(backend, args):
            out.append((f", {variant}", True, variant, options()))
    return out


def _add_reference(backend, name, cascade, x, args, settings, meta, gflops, log) -> None:
    """The official code's cascade on our weights, checked against ours on the benchmark batch."""
    if backend.name != "torch":
        return
    ref = backend.reference(name, cascade, args.reference)
    if ref is None:
        log(f"  --reference: the official code has no counterpart of {name}; not timed")
        return
    ours, theirs = per_exit(backend.forward(cascade, x)), ref(x)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs))
    log(f"  reference: official code on the same weights, per-exit logits differ by <= {diff:.2g}")
    setting = "reference full cascade (official code)"
    settings[setting] = lambda: ref(x)
    meta[setting] = dict(kind="reference", gflops_per_image=gflops, role=REFERENCE,
                         note=f"logits within {diff:.2g} of ours")


def print_run(run: RunResult, cascade_cfg, static_cfg) -> None:
    print(f"\n== {run.framework} / {run.device} / {run.model} / batch {run.batch_size} "
          f"({', '.join(f'{k} {v}' for k, v in run.info.items())}) ==")
    print(f"{'setting':48s} {'ms/batch':>10s} {'min ms':>10s} {'CPU ms':>10s} {'img/s':>8s} {'GFLOPs/img':>10s}  exits")
    for m in run.measurements:
        counts = "/".join(map(str, m.exit_counts)) if m.exit_counts else ""
        print(f"{m.setting:48s} {m.median_ms:10.1f} {m.min_ms:10.1f} {m.cpu_median_ms:10.1f} {m.images_per_s:8.1f} "
              f"{m.gflops_per_image:10.4f}  {counts}" + (f"  [{m.note}]" if m.note else ""))
    for c in run.comparisons(cascade_cfg, static_cfg):
        print(f"{c['setting']:48s} speedup {c['measured_speedup']:.3f}x vs {c['baseline']!r}, FLOPs-predicted "
              f"{c['predicted_speedup']:.3f}x, ratio {c['ratio']:.3f} (paired rounds {c['paired_ratio']:.3f}, "
              f"minima {c['minima_ratio']:.3f}, CPU time {c['cpu_ratio'] or float('nan'):.3f})")
    for o in run.overheads():
        print(f"{o['setting']:48s} overhead vs full cascade {100 * o['overhead']:+.1f}% (paired rounds "
              f"{100 * o['paired_overhead']:+.1f}%, minima {100 * o['minima_overhead']:+.1f}%, "
              f"CPU time {100 * (o['cpu_overhead'] or float('nan')):+.1f}%)")
    ref = run.reference_comparison()
    if ref:
        print(f"{ref['setting']:48s} takes {ref['time_fraction']:.3f} of the official code's time (paired rounds "
              f"{ref['paired_time_fraction']:.3f}, minima {ref['minima_time_fraction']:.3f}, "
              f"CPU time {ref['cpu_time_fraction'] or float('nan'):.3f})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--framework", default="torch,mindspore",
                   help="comma-separated: torch, mindspore, and for exported graphs onnxruntime, mindir")
    p.add_argument("--device", default="cpu", help="cpu | cuda | Ascend (MindSpore: cpu / gpu / ascend)")
    p.add_argument("--models", default="dvt_t2t_vit_12,dvt_t2t_vit_14", help="comma-separated cascade names")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--mixtures", default=None,
                   help="comma-separated exit fractions, e.g. 0.6/0.25/0.15 (default per exit count); "
                        "0/../1 (all to the last exit) is always added")
    p.add_argument("--kernels", default="fast,default",
                   help="adaptive variants: fast (fused attention, deferred relations), default, or both "
                        "(= fast,default)")
    p.add_argument("--relations", default="deferred",
                   help="torch fast kernels: how exits hand attention logits on, comma-separated: deferred (computed "
                        "after the exit decision from kept q, k), recompute (from kept block inputs), explicit")
    p.add_argument("--compile", action="store_true",
                   help="torch: also time early exit with every exit stage compiled (torch.compile), against the "
                        "static backbone compiled the same way; the first call (compiling) is reported apart")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="torch on CUDA: also time early exit with every exit stage replayed as a CUDA graph (one per "
                        "stage and padded batch size), against the static backbone run the same way")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="torch: also time the official DVT PyTorch code (a checkout or git mirror of "
                        "blackfeather-wang/Dynamic-Vision-Transformer) on the same weights, against our full cascade")
    p.add_argument("--settings", default="static,cascade,adaptive,reference",
                   help="which settings to time, comma-separated: static, cascade, adaptive, reference "
                        "(reference needs --reference)")
    p.add_argument("--criterion", default="confidence", choices=("confidence", "entropy"))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per framework (default: framework's)")
    p.add_argument("--amp", action="store_true", help="mixed precision (torch autocast / ms_impl.amp 'O1')")
    p.add_argument("--ms-mode", default="pynative", choices=("pynative", "graph"))
    p.add_argument("--checkpoint", default=None, help="weights for the cascade (one model only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/benchmark", help="directory for benchmark.json / benchmark.md")
    p.add_argument("--export-sizes", default="1,8,16,32,64",
                   help="onnxruntime / mindir: fixed batch sizes of the exported cascade (vs a dynamic batch)")
    p.add_argument("--export-dir", default=None,
                   help="onnxruntime / mindir: keep the exports here (default: a temporary folder)")
    args = p.parse_args(argv)
    args.frameworks = [f.strip().lower() for f in args.framework.split(",") if f.strip()]
    unknown = sorted(set(args.frameworks) - set(BACKENDS) - set(EXPORTED))
    if unknown:
        p.error(f"unknown framework(s) {unknown}; choose from {sorted(BACKENDS) + list(EXPORTED)}")
    args.model_names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_names:
        p.error("--models names no model")
    try:
        args.batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}")
    if not args.batches or any(b < 1 for b in args.batches):
        p.error("batch sizes must be >= 1")
    variants = {v.strip() for v in args.kernels.split(",") if v.strip()}
    if "both" in variants:
        variants = (variants - {"both"}) | {"fast", "default"}
    if not variants or variants - {"fast", "default"}:
        p.error(f"--kernels takes fast, default or both (fast,default), got {args.kernels!r}")
    args.fast_variants = [v == "fast" for v in ("fast", "default") if v in variants]
    if args.warmup < 0 or args.repeat < 1:
        p.error("--warmup must be >= 0 and --repeat >= 1")
    if args.checkpoint and len(args.model_names) != 1:
        p.error("--checkpoint needs exactly one model in --models")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        p.error(f"--checkpoint {args.checkpoint!r}: no such file")
    args.mixture_lists = {}
    for name in args.model_names:
        try:
            k_exits = get_config(name).num_exits
            args.mixture_lists[name] = mixtures_for(k_exits, args.mixtures)
        except ValueError as err:  # unknown model (with suggestions), bad mixture
            p.error(str(err))
    if args.cuda_graphs and args.device.lower() not in ("cuda", "gpu"):
        p.error("--cuda-graphs needs --device cuda")
    args.relation_modes = [v.strip() for v in args.relations.split(",") if v.strip()]
    if not args.relation_modes or set(args.relation_modes) - {"deferred", "recompute", "explicit"}:
        p.error("--relations takes deferred, recompute and/or explicit")
    kinds = {v.strip() for v in args.settings.split(",") if v.strip()}
    if not kinds or kinds - {"static", "cascade", "adaptive", "reference"}:
        p.error("--settings takes static, cascade, adaptive and/or reference")
    if args.reference:
        from torch_impl.official import is_official_repo
        if not is_official_repo(args.reference):
            p.error(f"--reference {args.reference}: not a checkout or git mirror of the official DVT code "
                    "(models/t2t_vit.py not found)")
    else:
        kinds.discard("reference")
    args.setting_kinds = kinds
    return args


def mixtures_for(k_exits: int, spec: str | None) -> list[tuple[float, ...]]:
    """The exit mixtures to time (ValueError for malformed ones), plus 0/../1 (every image to the last exit)."""
    texts = spec.split(",") if spec else DEFAULT_MIXTURES.get(k_exits, ())
    mixtures = [parse_mixture(t) for t in texts if t.strip()]
    bad = [mixture_label(m) for m in mixtures if len(m) != k_exits]
    if bad:
        raise ValueError(f"--mixtures {bad} do not have {k_exits} fractions (one per exit)")
    all_last = tuple([0.0] * (k_exits - 1) + [1.0])
    return mixtures + ([all_last] if all_last not in mixtures else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = []
    for fw in args.frameworks:
        if fw in EXPORTED:
            from common.deploy import benchmark as exported
            runs = exported.run_framework(fw, args, mixtures_for, log)
            print("\nwrote {} and {}".format(*exported.write(runs, args, sys.argv[1:] if argv is None else argv, fw)))
            continue
        backend = BACKENDS[fw](args.device, args.threads, args.amp, args.ms_mode)
        for name in args.model_names:
            mixtures = args.mixture_lists[name]
            for batch in args.batches:
                log(f"[{fw}] {name} batch {batch}")
                try:
                    run, cascade_cfg, static_cfg = bench_model(backend, name, batch, mixtures, args, log)
                except CheckpointProblem as err:  # a --checkpoint that does not load or fit
                    print(f"error: {err}", file=sys.stderr)
                    return 2
                print_run(run, cascade_cfg, static_cfg)
                results.append((run, cascade_cfg, static_cfg))
                meta = dict(command=" ".join(["tools/benchmark.py"] + list(argv if argv is not None else sys.argv[1:])),
                            host=platform.node(), cpu=platform.processor() or platform.machine(),
                            python=platform.python_version(), warmup=args.warmup, repeat=args.repeat,
                            criterion=args.criterion, date=time.strftime("%Y-%m-%d %H:%M:%S"))
                js, md = write_report(report_dict(results, meta), args.out)  # after every run: partial results survive
    if results:
        print(f"\nwrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
