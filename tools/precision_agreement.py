#!/usr/bin/env python
"""Mixed-precision agreement of a trained DVT: torch autocast fp16 / bf16 and MindSpore AMP O1 / O2 against fp32.

    python tools/precision_agreement.py RUN_DIR [--split test|calib] [--out DIR] [--force]
    python tools/precision_agreement.py CHECKPOINT (--images DIR | --random N) [--out DIR]

RUN_DIR is a training run's output folder (checkpoint, thresholds.json, args.yaml): its images are the run's
own evaluation split (`--split`, default test) and its solved thresholds (every budget of every solver) decide
the exits. One float32 model per framework is the reference; each precision the device has the kernels for
runs the same images: torch fp32 / fp16 / bf16 (autocast) and MindSpore fp32 / O1 / O2 (float16) and
O1-bf16 / O2-bf16; a precision whose kernels are missing (MindSpore 2.10's CPU has no bfloat16 MatMul) is
reported as not measurable, with MindSpore's message. Written into a fresh folder (default
outputs/precision/<date>-<time>-<name>; the policy of `common.training.output_folder`): report.md and report.json with, per run against its framework's
fp32 and against torch fp32, per-exit top-1 agreement, exit-decision agreement (fractions of the images) and
logits max-abs, and whether they are within the tolerance of `common.precision` (parity/README.md).
Exit status 0 when every measured run is within tolerance, 1 otherwise, 2 for bad input (nothing written).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

from common.divergence import comparison_inputs  # noqa: E402
from common.precision import RUN_DTYPE, agreement_table, check_tolerance  # noqa: E402

RUNS = {"torch": ("fp32", "fp16", "bf16"), "mindspore": ("fp32", "O1", "O2", "O1-bf16", "O2-bf16")}
CHECKPOINTS = ("checkpoint.pth", "checkpoint.ckpt", "checkpoint.safetensors")


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="precision_agreement.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", type=Path, help="a training run's folder, or a checkpoint file")
    p.add_argument("--split", choices=("test", "calib"), default="test", help="a run's evaluation split")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="folder of image files (checkpoint mode)")
    src.add_argument("--random", type=int, metavar="N", help="N seeded N(0, 1) images (checkpoint mode)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--precisions", help="only these runs, e.g. 'torch:fp16,mindspore:O1' (torch fp32, the "
                                        "reference, always runs)")
    p.add_argument("--frameworks", default="torch,mindspore", help="which to run (default both)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, help="output folder (default outputs/precision/<date>-<time>-<name>)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    return p


def run_thresholds(run: Path) -> list:
    """Every solved threshold set of a run (all solvers, all budgets), K-1 values each."""
    from common.thresholds.curve import ThresholdCurve
    path = run / "thresholds.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    sets = []
    for entry in (data.get("solvers") or {}).values():
        curve = ThresholdCurve.from_dict(entry["curve"])
        sets += [row[:-1] for row in curve.thresholds]
    return sets


def normalise(images_u8: np.ndarray, cfg) -> np.ndarray:
    """uint8 (N, H, W, C) at the model's size -> the normalised float32 (N, C, H, W) the model takes."""
    x = images_u8.astype(np.float32) / 255.0
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def run_images(run: Path, cfg, split: str) -> tuple[np.ndarray, dict]:
    import yaml
    from common.deploy.preprocess import preprocess_image_file
    from common.training.splits import resolve_splits
    args = yaml.safe_load((run / "args.yaml").read_text()) if (run / "args.yaml").is_file() else {}
    dataset, data_dir = args.get("dataset", "digits"), args.get("data_dir", "")
    data = getattr(resolve_splits(dataset, data_dir, cfg.img_size), split)
    if data.images is not None and data.images.shape[1:3] == (cfg.img_size, cfg.img_size):
        x = normalise(data.images, cfg)
    elif data.paths is not None:
        x = np.stack([preprocess_image_file(p, cfg) for p in data.paths]).astype(np.float32)
    else:
        raise UsageError(f"{dataset} images are {data.images.shape[1:3]}, the model takes {cfg.img_size}")
    return x, {"description": f"{len(x)} images of the run's {split} split ({dataset})", "labels": data.labels}


def to_mindspore_file(path: Path, folder: Path) -> Path:
    """A file MindSpore reads: .ckpt / .safetensors as they are, a .pth converted to .safetensors (canonical)."""
    from common.convert import convert, format_of, write_safetensors
    if format_of(path) != "torch":
        return path
    from torch_impl.checkpoint import read_checkpoint, tensor_to_numpy
    conv = convert(read_checkpoint(path), to_numpy=tensor_to_numpy)
    return write_safetensors(folder / "weights.safetensors", conv.tensors, conv.metadata())


def _wanted(spec: str | None, framework: str):
    if not spec:
        return None
    pairs = [item.split(":", 1) for item in spec.split(",") if item]
    bad = [":".join(p) for p in pairs if len(p) != 2 or p[0] not in RUNS or p[1] not in RUNS[p[0]]]
    if bad:
        raise UsageError(f"--precisions: {bad}; expected FRAMEWORK:PRECISION from {RUNS}")
    return {p for f, p in pairs if f == framework}


def measure(args) -> dict:
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = sorted(set(frameworks) - set(RUNS))
    if unknown:
        raise UsageError(f"--frameworks: unknown {unknown}; expected torch, mindspore")
    src = args.source
    run = src if src.is_dir() else None
    ckpt = next((src / c for c in CHECKPOINTS if (src / c).is_file()), None) if run else src
    if ckpt is None or not ckpt.is_file():
        raise UsageError(f"{src}: no checkpoint ({' or '.join(CHECKPOINTS)} in a run folder, or a file)")
    logits, failures, cfg, labels, inputs = {}, {}, None, None, None
    with tempfile.TemporaryDirectory() as tmp:
        for framework in frameworks:
            stages = importlib.import_module(f"{'torch_impl' if framework == 'torch' else 'ms_impl'}.stages")
            path = ckpt if framework == "torch" else to_mindspore_file(ckpt, Path(tmp))
            model, _ = stages.load_model(path)
            if cfg is None:
                cfg = model.config
                if run is not None and args.images is None and args.random is None:
                    images, inputs = run_images(run, cfg, args.split)
                    labels = inputs.pop("labels")
                else:
                    images, inputs = comparison_inputs(cfg, args.images, args.random, default_random=64)
                if args.limit:
                    images, labels = images[:args.limit], None if labels is None else labels[:args.limit]
                    inputs["description"] += f", the first {len(images)}"
            wanted = _wanted(args.precisions, framework)
            for precision in RUNS[framework]:
                reference = framework == "torch" and precision == "fp32"
                if wanted is not None and precision not in wanted and not reference:
                    continue
                name = f"{framework} {precision}"
                print(f"{name} on {len(images)} images ...", file=sys.stderr, flush=True)
                try:
                    logits[name] = stages.run_logits(model, images, precision, args.batch_size)
                except (RuntimeError, TypeError) as err:  # a kernel the device lacks
                    first = next((line.strip() for line in str(err).splitlines() if line.strip()), repr(err))
                    failures[name] = first[:300]
    thresholds = run_thresholds(run) if run else []
    report = {"model": cfg.name, "checkpoint": str(ckpt), "inputs": inputs, "threshold_sets": len(thresholds),
              "not_measurable": failures, "against_own_fp32": {}, "against_torch_fp32": {}}
    if labels is not None:
        report["top1_accuracy"] = {n: [float(np.mean(z.argmax(-1) == labels)) for z in zs] for n, zs in logits.items()}
    for framework in frameworks:
        own = {n: z for n, z in logits.items() if n.startswith(framework)}
        if f"{framework} fp32" in own:
            report["against_own_fp32"].update(agreement_table(own, f"{framework} fp32", thresholds))
    if "torch fp32" in logits:
        report["against_torch_fp32"] = agreement_table(logits, "torch fp32", thresholds)
    for table in (report["against_own_fp32"], report["against_torch_fp32"]):
        for name, row in table.items():
            row["outside_tolerance"] = check_tolerance(row, RUN_DTYPE[name.split()[1]])
    report["versions"] = versions(frameworks)
    return report


def versions(frameworks) -> dict:
    import importlib.metadata as md
    out = {"numpy": np.__version__}
    for f in frameworks:
        out[f] = md.version(f)
    return out


def markdown(report: dict) -> str:
    lines = [f"# Mixed-precision agreement: {report['model']}", "", f"- checkpoint: `{report['checkpoint']}`",
             f"- inputs: {report['inputs']['description']}; exit decisions at {report['threshold_sets']} solved "
             "threshold sets (and over the threshold sweep)", ""]
    for title, key in (("against the same framework's fp32", "against_own_fp32"),
                       ("against torch fp32", "against_torch_fp32")):
        lines += [f"## {title}", "", "| run | top-1 agreement per exit | exit decisions (solved: min / mean) | "
                  "exit decisions (sweep: min / mean) | logits max-abs per exit | within tolerance |",
                  "|---|---|---|---|---|---|"]
        for name, r in report[key].items():
            solved = (f"{r['decision_agreement_min']:.4f} / {r['decision_agreement_mean']:.4f}"
                      if "decision_agreement_min" in r else "-")
            lines.append(f"| {name} | {' / '.join(f'{a:.4f}' for a in r['top1_agreement'])} | {solved} | "
                         f"{r['sweep_decision_agreement_min']:.4f} / {r['sweep_decision_agreement_mean']:.4f} | "
                         f"{' / '.join(f'{d:.2e}' for d in r['logits_max_abs'])} | "
                         f"{'yes' if not r['outside_tolerance'] else 'NO: ' + '; '.join(r['outside_tolerance'])} |")
        lines.append("")
    if report.get("top1_accuracy"):
        lines += ["| run | top-1 accuracy per exit |", "|---|---|"]
        lines += [f"| {n} | {' / '.join(f'{a:.4f}' for a in acc)} |" for n, acc in report["top1_accuracy"].items()]
        lines.append("")
    for name, why in report["not_measurable"].items():
        lines.append(f"- {name}: not measurable here ({why})")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.atomic import atomic_write_text
    from common.training.output_folder import RunFolderError, claim_output
    try:
        with claim_output(args.out, kind="precision", name=args.source.name.split(".")[0] or "model",
                          files=["report.md", "report.json"], command="tools/precision_agreement.py", flag="--out",
                          force=args.force) as out:
            report = measure(args)
            atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
            atomic_write_text(out / "report.md", markdown(report))
    except (UsageError, RunFolderError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(report))
    print(f"wrote {out}/report.md, report.json")
    outside = [r for t in ("against_own_fp32", "against_torch_fp32") for r in report[t].values() if r["outside_tolerance"]]
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
