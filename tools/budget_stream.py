"""Run a trained model on a stream whose difficulty drifts, under the budget controller, and plot it.

    python tools/budget_stream.py runs/digits                       # target: the middle of the model's range
    python tools/budget_stream.py runs/digits --target-gflops 0.006 --batch-size 32 --out runs/digits/stream
    python tools/budget_stream.py runs/digits --target-ips 300      # per-exit times measured here, wall-clock feedback

The stream: the run's test split plus degraded copies of it (Gaussian noise, blur, low contrast, each at
`--severities` levels), served first from easy to hard (by the last exit's loss on each image) and then the same
images shuffled, in batches of `--batch-size`. Every batch runs the real early exit (`forward_adaptive` of the
backend, per-row thresholds from the controller), and the realised cost is fed back. Written to `--out`
(default RUN/budget_stream): `budget_stream.json` (the report: warm-up, tracking error, accuracy, the curve's
static thresholds and the offline optimum at the same cost, every batch) and `budget_stream.png` (target vs
realised cost and accuracy over the images served).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

DEGRADATIONS = ("noise", "blur", "contrast")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a training or evaluation run folder (checkpoint, args.yaml)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: RUN/checkpoint.pth (or .ckpt)")
    p.add_argument("--backend", choices=("torch", "mindspore"), default=None)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-gflops", type=float, default=None,
                        help="average GFLOPs per image to hold (default: halfway between exit 1 and the last exit)")
    target.add_argument("--target-ips", type=float, default=None, help="images per second to hold")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--degrade", default="noise,blur,contrast",
                   help=f"degraded copies mixed into the stream, comma-separated from {','.join(DEGRADATIONS)} "
                        "('' for none)")
    p.add_argument("--severities", type=int, default=2, help="levels of each degradation (default 2)")
    p.add_argument("--phases", default="sorted,shuffled", help="stream phases: sorted, reversed, shuffled")
    p.add_argument("--window", type=int, default=512, help="images in the sliding-window average (default 512)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    return p


def degrade(img, kind: str, level: int, rng):
    """A PIL RGB image made harder: Gaussian noise (sigma 0.15 * level), blur (radius 0.6 * level), contrast."""
    from PIL import Image, ImageEnhance, ImageFilter

    if kind == "noise":
        a = np.asarray(img, dtype=np.float32) / 255.0
        a = np.clip(a + rng.normal(0, 0.15 * level, a.shape), 0, 1)
        return Image.fromarray((a * 255 + 0.5).astype(np.uint8))
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(0.6 * level))
    if kind == "contrast":
        return ImageEnhance.Contrast(img).enhance(1.0 / (1 + 1.5 * level))
    raise ValueError(f"unknown degradation {kind!r}; choose from {DEGRADATIONS}")


def stream_images(run_args: dict, cfg_img_size: int, kinds, severities: int, seed: int):
    """(PIL images, labels, names of their variant) of the test split and its degraded copies."""
    from PIL import Image

    from common.training.splits import resolve_splits

    splits = resolve_splits(run_args.get("dataset", "digits"), run_args.get("data_dir", "") or "", cfg_img_size,
                            run_args.get("calib_size"))
    test = splits.test
    rng = np.random.default_rng(seed)
    if test.images is not None:
        base = [Image.fromarray(a).convert("RGB") for a in test.images]
    else:
        base = [Image.open(path).convert("RGB") for path in test.paths]
    images, labels, variant = list(base), list(test.labels), ["clean"] * len(base)
    for kind in kinds:
        for level in range(1, severities + 1):
            images += [degrade(img, kind, level, rng) for img in base]
            labels += list(test.labels)
            variant += [f"{kind}{level}"] * len(base)
    return images, np.asarray(labels, dtype=np.int64), variant


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kinds = [k for k in args.degrade.split(",") if k]
    bad = [k for k in kinds if k not in DEGRADATIONS]
    if bad:
        parser.error(f"--degrade: unknown {bad}; choose from {list(DEGRADATIONS)}")
    if args.batch_size < 1 or args.severities < 0 or args.window < 1:
        parser.error("--batch-size and --window must be >= 1, --severities >= 0")
    ckpt = args.checkpoint or next((args.run / n for n in ("checkpoint.pth", "checkpoint.ckpt")
                                    if (args.run / n).is_file()), None)
    if ckpt is None or not Path(ckpt).is_file():
        parser.error(f"{args.run}: no checkpoint.pth or checkpoint.ckpt (pass --checkpoint)")
    import yaml

    from common.deploy import preprocess_image
    from common.serving.backend import load_backend
    from common.serving.controller import BudgetController, measure_exit_costs
    from common.serving.plots import plot_stream
    from common.serving.stream import drifting_order, run_stream, stream_report
    from common.thresholds.scores import ExitScores, exit_correct, exit_scores

    run_args = yaml.safe_load((args.run / "args.yaml").read_text()) if (args.run / "args.yaml").is_file() else {}
    backend = load_backend(ckpt, args.backend, threads=args.threads)
    if backend.curve is None:
        parser.error(f"{ckpt}: carries no threshold curve")
    lo, hi = float(backend.gflops[0]), float(backend.gflops[-1])
    images, labels, variant = stream_images(run_args, backend.input_shape[1], kinds, args.severities, args.seed)
    x = np.stack([preprocess_image(img, backend.preprocessing) for img in images])
    print(f"{backend.model_name} ({backend.name}): stream of {len(x)} images x {len(args.phases.split(','))} phases "
          f"({', '.join(sorted(set(variant)))}), batches of {args.batch_size}", flush=True)
    logits = np.concatenate([backend.cascade(x[i:i + 256]) for i in range(0, len(x), 256)], axis=1)
    scores = ExitScores(exit_scores(logits, backend.curve.criterion), exit_correct(logits, labels), backend.gflops,
                        backend.curve.criterion)
    last = logits[-1].astype(np.float64)
    lse = np.log(np.exp(last - last.max(1, keepdims=True)).sum(1)) + last.max(1)
    difficulty = lse - last[np.arange(len(labels)), labels]  # the last exit's loss: easy first
    order = drifting_order(difficulty, args.seed, args.phases.split(","))

    timed = args.target_ips is not None
    if timed:
        costs = measure_exit_costs(backend.run, x[:args.batch_size], backend.num_exits)
        ctl = BudgetController(backend.curve, 1.0 / args.target_ips, exit_cost=costs.seconds, seed=args.seed)
        unit, target_text = "seconds / image", f"{args.target_ips:g} images/s"
    else:
        target = args.target_gflops if args.target_gflops is not None else 0.5 * (lo + hi)
        if not lo <= target <= hi:
            parser.error(f"--target-gflops {target:g}: this model spends {lo:.6g} .. {hi:.6g} GFLOPs per image")
        ctl = BudgetController(backend.curve, target, seed=args.seed)
        unit, target_text = "GFLOPs / image", f"{target:.6g} GFLOPs/image"
    offline = {"mismatches": 0}

    def decide(rows, thresholds):
        start = time.perf_counter()
        out = backend.run(x[rows], thresholds)
        seconds = time.perf_counter() - start
        from common.adaptive import offline_exits
        offline["mismatches"] += int((offline_exits(logits[:, rows], thresholds, backend.curve.criterion)
                                      != out.exit_index).sum())
        return out.exit_index, seconds

    start = time.perf_counter()
    result = run_stream(ctl, order, args.batch_size, decide, correct=scores.correct, realised_from_time=timed)
    wall = time.perf_counter() - start
    report = stream_report(result, scores, ctl, window=args.window)
    report.update(model=backend.model_name, backend=backend.name, checkpoint=str(ckpt), target_text=target_text,
                  unit=unit, curve_solver=backend.curve.solver, variants=sorted(set(variant)),
                  phases=args.phases.split(","), seconds=wall, images_per_second=len(order) / wall,
                  decisions_differing_from_offline_rule=offline["mismatches"], gflops_range=[lo, hi])
    if timed:
        report["exit_seconds_per_image"] = costs.seconds.tolist()
        report["static_is_gflops"] = False
    out = args.out or args.run / "budget_stream"
    out.mkdir(parents=True, exist_ok=True)
    from common.atomic import atomic_write

    atomic_write(out / "budget_stream.json", lambda f: f.write(json.dumps(report, indent=1).encode()))
    n = len(images)
    phases = [(n * i, p) for i, p in enumerate(args.phases.split(","))]
    plot_stream(report, out / "budget_stream.png", unit=unit, phases=phases,
                title=f"{backend.model_name}: budget controller at {target_text}, batches of {args.batch_size}")
    wu = report["warm_up"]
    print(f"target {target_text}: realised {report['realised_average']:.6g} {unit} on average "
          f"({100 * report['realised_average_error']:+.2f}%); running average within +-3% after "
          f"{wu['since_start']['images']} images, last-{args.window} average after {wu['window']['images']} images "
          f"(max error after that {_pct(report['window_error_after_warm_up']['max_abs'])}, overall "
          f"{_pct(report['window_error_overall_max_abs'])})")
    print(f"accuracy {100 * report['accuracy']:.2f}% at {report['gflops_per_image']:.6g} GFLOPs/image; offline "
          f"optimum at that cost {100 * report['offline_optimum_accuracy_at_realised_gflops']:.2f}%; the curve's "
          f"static thresholds: {100 * report['static']['accuracy']:.2f}% at {report['static']['realised_average']:.6g}"
          f" {unit} (sliding-window error up to {_pct(report['static']['window_error_max_abs'])})")
    print(f"decisions differing from the offline rule: {offline['mismatches']}; wrote {out / 'budget_stream.json'} "
          f"and {out / 'budget_stream.png'}")
    return 0


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
