#!/usr/bin/env python
"""Find where two DVT checkpoints diverge: per-stage margins, first divergence, top-1 and exit agreement.

    python tools/compare.py A B [--model NAME] [--images DIR | --random N] [--atol 1e-5] [--out DIR]
                            [--a-framework torch|mindspore] [--b-framework ...] [--a-precision P] [--b-precision P]

A and B are any checkpoints the converter reads (.pth / .ckpt / .safetensors, our namings, the reference's or
the MindSpore port's). Each runs in its framework — by default the one of its format (.pth: torch, .ckpt:
MindSpore, .safetensors: the naming it was written with) — on the same inputs: the image files of --images
(the config's evaluation transform) or --random N seeded N(0, 1) images (default 8). The same file twice with
another --b-precision compares fp32 with mixed precision (torch: fp16 / bf16 autocast; MindSpore: AMP O1 / O2
in float16, O1-bf16 / O2-bf16 where the device has bfloat16 kernels); two files of one framework compare,
say, a model before and after fine-tuning. A is the reference.

Written into a fresh folder (the output-folder policy of `common.training.output_folder`: --out, default a new
outputs/compare/<date>-<time>-<A>-vs-<B>; a folder holding an earlier comparison needs --force, which replaces
only its report files and dumps; every file is written atomically): report.md and report.json with, per stage (each exit's tokenizer, reused
relations, every block's attention logits / reused context / output, final norm, head), max-abs, max-relative
(max |A - B| / max |A|), cosine similarity, the fraction within atol, the first stage past tolerance
(max |A - B| > atol x max(1, max |A|)); per-exit top-1 agreement; exit-decision agreement over a threshold
sweep. --dumps also writes every stage of each side as .npy files (dumps/a, dumps/b) in TroubleShooter's
layout: `troubleshooter.migrator.compare_npy_dir("dumps/a", "dumps/b")` compares them in its own table.
Exit status: 0 nothing diverges, 1 a stage diverges, 2 bad input (nothing written).

Libraries, evaluated first (TroubleShooter 1.0.10, mindstudio-probe 26.2.0 with MindSpore 2.10 / torch 2.15 on
CPU): TroubleShooter's `NetDifferenceFinder` compares a torch and a MindSpore network's final outputs after its
own weight conversion (it knows neither our namings nor DVT's stages, nor two checkpoints of one framework);
its `compare_npy_dir` / `cal_algorithm` compare .npy directories by name (allclose, match ratio, cosine,
mean / max abs, printed): the dump layout is used here, its metrics are computed the same way (see
`common.divergence`). msprobe's PyTorch dumps and `msprobe compare` work on CPU, but its MindSpore dump fails
there (its statistics call `mint.norm`, whose LinalgVectorNorm kernel MindSpore 2.10 has not on CPU), and its
module-level dumps miss what DVT reuses (context and relation maps are computed inside methods, not returned
by modules); neither knows an exit rule. So the stage capture, the first divergence, top-1 and the exit
decisions are written here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

from common.checkpoints import CheckpointMismatchError  # noqa: E402
from common.config import ConfigError  # noqa: E402
from common.certificate import framework_of  # noqa: E402
from common.convert import ConversionError, format_of  # noqa: E402
from common.divergence import compare_stages, comparison_inputs, markdown  # noqa: E402

EXIT_DIVERGED, EXIT_ERROR = 1, 2
FRAMEWORKS = ("torch", "mindspore")
PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "mindspore": ("fp32", "O1", "O2", "O1-bf16", "O2-bf16")}
STAGES_MODULE = {"torch": "torch_impl.stages", "mindspore": "ms_impl.stages"}
REPORT_FILES = ("report.md", "report.json")  # what --force replaces (dumps/ is replaced whole)


class UsageError(ValueError):
    """Bad input: reported with exit status 2, nothing written."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("a", type=Path, help="reference checkpoint")
    p.add_argument("b", type=Path, help="checkpoint to compare with A")
    p.add_argument("--model", help="registered config of both (default: each file's own, inferred)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="folder of image files (the config's evaluation transform)")
    src.add_argument("--random", type=int, metavar="N", help="N seeded N(0, 1) images (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    p.add_argument("--atol", type=float, default=1e-5, help="tolerance (default 1e-5; scaled by max(1, max |A|))")
    p.add_argument("--out", type=Path, help="output folder (default outputs/compare/<date>-<time>-<A>-vs-<B>)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    for side in ("a", "b"):
        p.add_argument(f"--{side}-framework", choices=FRAMEWORKS,
                       help=f"framework that runs {side.upper()} (default: its file format's)")
        p.add_argument(f"--{side}-precision", default="fp32",
                       help=f"{side.upper()}'s precision: torch fp32|fp16|bf16, MindSpore fp32|O1|O2|O1-bf16|O2-bf16")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--dumps", action="store_true", help="also write every stage as .npy (TroubleShooter layout)")
    return p


def default_name(a: Path, b: Path) -> str:
    def stem(p: Path) -> str:
        return p.name.split(".")[0] or "checkpoint"
    return f"{stem(a)}-vs-{stem(b)}"


def side(args, which: str) -> dict:
    path = getattr(args, which)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    framework = getattr(args, f"{which}_framework") or framework_of(path)
    precision = getattr(args, f"{which}_precision")
    if precision not in PRECISIONS[framework]:
        raise UsageError(f"--{which}-precision {precision!r}: {framework} runs {'|'.join(PRECISIONS[framework])}")
    if framework == "mindspore" and format_of(path) == "torch":
        raise UsageError(f"{path}: MindSpore does not read PyTorch pickles; convert it first "
                         f"(tools/convert_weights.py) or run it with --{which}-framework torch")
    import importlib
    try:
        stages = importlib.import_module(STAGES_MODULE[framework])
    except ImportError as err:
        raise UsageError(f"{which.upper()} needs {framework}, which is not installed ({err})") from None
    model, naming = stages.load_model(path, args.model)
    return {"path": str(path), "framework": framework, "precision": precision, "naming": naming,
            "model": model.config.name, "framework_version": stages.framework_version(), "stages_module": stages,
            "model_obj": model}


def run(args) -> tuple[dict, dict, dict]:
    a, b = side(args, "a"), side(args, "b")
    cfg_a, cfg_b = a["model_obj"].config, b["model_obj"].config
    if (cfg_a.num_exits, cfg_a.depth, cfg_a.grids) != (cfg_b.num_exits, cfg_b.depth, cfg_b.grids):
        raise UsageError(f"A ({cfg_a.name}: {cfg_a.num_exits} exits of depth {cfg_a.depth}, grids {cfg_a.grids}) "
                         f"and B ({cfg_b.name}: {cfg_b.num_exits} of {cfg_b.depth}, {cfg_b.grids}) have different "
                         "stages; compare checkpoints of one architecture")
    try:
        images, inputs = comparison_inputs(cfg_a, args.images, args.random, args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    captured = {}
    for name, s in (("a", a), ("b", b)):
        print(f"{name.upper()}: {s['framework']} ({s['precision']}) {s['model']} on {len(images)} images ...",
              file=sys.stderr, flush=True)
        captured[name] = s["stages_module"].capture_stages(s["model_obj"], images, s["precision"], args.batch_size)
    report = compare_stages(captured["a"], captured["b"], cfg_a, args.atol)
    for name, s in (("a", a), ("b", b)):
        report[name] = {k: v for k, v in s.items() if k not in ("stages_module", "model_obj")}
    report["inputs"] = inputs
    report["versions"] = versions(a, b)
    return report, captured["a"], captured["b"]


def versions(*sides) -> dict:
    out = {"numpy": np.__version__, "python": sys.version.split()[0]}
    for s in sides:
        out[s["framework"]] = s["framework_version"]
    return out


def write(out: Path, force: bool, report: dict, dumps: dict | None) -> None:
    """Into the claimed folder: the dumps as one folder staged whole, then report.json, then report.md."""
    from common.atomic import atomic_write_text
    from common.deploy.manifest import DeployError
    from common.deploy.staging import staged_folder
    if dumps:
        try:
            with staged_folder(out / "dumps", force) as tmp:
                for name, stages in dumps.items():
                    (tmp / name).mkdir()
                    for index, (stage, value) in enumerate(stages.items()):
                        np.save(tmp / name / f"{index:04d}_{stage}.npy", value)
        except DeployError as err:
            raise UsageError(str(err)) from None
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, allow_nan=True) + "\n")
    atomic_write_text(out / "report.md", markdown(report))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.training.output_folder import RunFolderError, claim_output
    try:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        with claim_output(args.out, kind="compare", name=default_name(args.a, args.b), files=list(REPORT_FILES),
                          command="tools/compare.py", flag="--out", force=args.force) as out:
            report, dump_a, dump_b = run(args)
            if args.dumps:
                report["dumps"] = {"a": "dumps/a", "b": "dumps/b",
                                   "format": "one .npy per stage, <index>_<stage>.npy (TroubleShooter's compare_npy_dir)"}
            write(out, args.force, report, {"a": dump_a, "b": dump_b} if args.dumps else None)
    except (UsageError, RunFolderError, ConversionError, ConfigError, CheckpointMismatchError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(markdown(report).split("\n| # |")[0].rstrip())
    print(f"\nwrote {out}/report.md, report.json" + (", dumps/" if args.dumps else ""))
    return EXIT_DIVERGED if report["first_divergence"] else 0


if __name__ == "__main__":
    sys.exit(main())
