#!/usr/bin/env python
"""Export a DVT checkpoint as one graph per exit: ONNX (from PyTorch) or MINDIR (from MindSpore).

    python tools/export.py CHECKPOINT [--out DIR] --format onnx|mindir
        [--batch-sizes 1,8,32,64 | --dynamic-batch] [--thresholds RUN/thresholds.json | T1,T2] [--solver NAME]
        [--model NAME] [--ema] [--trust-pickle] [--no-verify] [--force]

CHECKPOINT is any weights file `tools/convert_weights.py` reads (.pth of either trainer or the released
reference files, .ckpt, .safetensors); a checkpoint of the other framework is converted in memory first
(the same validated conversion), so a MindSpore run exports to ONNX and a PyTorch run to MINDIR. The model
comes from --model or is inferred from the tensors (and the config the file carries).

DIR gets one graph per exit and batch size (`--batch-sizes`, default 1,8,32,64: static shapes, what
TensorRT profiles and MindSpore Lite compile) or one graph per exit with a dynamic batch axis
(`--dynamic-batch`), and `manifest.json`: the model and its config, per exit the grid, cumulative GFLOPs,
inputs and outputs, the graphs and their sha256, the preprocessing of input images, the thresholds / budget
curve of `--thresholds`, the versions that exported it, and the export-time check of every graph against
the eager model. Run it with `python tools/infer.py DIR ...` or `common.deploy.load_runner(DIR)`.

DIR (default: a new folder outputs/export/<date>-<time>-<model>-<format>) is written into a hidden staging
folder beside it and renamed at the end: it never holds a partial export. A DIR holding an export is refused
unless --force (which replaces that export whole); a DIR holding anything else is refused even with --force
(an export never deletes what it did not write); an empty DIR is used. Bad input (missing or damaged
checkpoint, unknown model, bad batch sizes or thresholds, a model the exporter cannot handle, a graph that
disagrees with the eager model) exits with status 2 and a message, leaving nothing behind.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set
TOOLS = str(Path(__file__).resolve().parent)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from common.checkpoints import CheckpointMismatchError  # noqa: E402
from common.config import ConfigError  # noqa: E402
from common.convert import ConversionError, convert, format_of, sha256_file  # noqa: E402
from common.deploy.exporting import EXPORTERS, export_model, exporter_for  # noqa: E402
from common.deploy.manifest import DeployError, check_batch_sizes  # noqa: E402
from common.deploy.staging import check_destination, new_export_folder  # noqa: E402
from common.deploy.thresholds import thresholds_entry  # noqa: E402

EXIT_ERROR = 2
DEFAULT_BATCH_SIZES = "1,8,32,64"
FRAMEWORK_OF_FILE = {"torch": "torch", "mindspore": "mindspore", "safetensors": None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("checkpoint", type=Path, help="weights file (.pth / .pth.tar / .pt, .ckpt, .safetensors)")
    p.add_argument("--out", type=Path, default=None,
                   help="export folder to create (default: a new outputs/export/<date>-<time>-<model>-<format>)")
    p.add_argument("--format", required=True, choices=sorted(EXPORTERS),
                   help="onnx (exported from PyTorch) or mindir (exported from MindSpore)")
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument("--batch-sizes", default=None,
                       help=f"static graphs for these batch sizes, comma-separated (default {DEFAULT_BATCH_SIZES})")
    sizes.add_argument("--dynamic-batch", action="store_true", help="one graph per exit with a dynamic batch axis")
    p.add_argument("--thresholds", default=None,
                   help="a run's thresholds.json, a threshold-curve JSON, or numbers T1,T2 (one per exit but the last)")
    p.add_argument("--solver", default=None, help="which solver's curve of a thresholds.json (default: its "
                                                  "default_solver, else geometric, exact, genetic)")
    p.add_argument("--model", default=None, help="registered config name (default: inferred from the tensors)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let a .pth unpickle arbitrary objects (trusted files only; see convert_weights.py)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the export-time check of every graph against the eager model")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    return p


def parse_sizes(args) -> tuple[int, ...] | None:
    if args.dynamic_batch:
        return None
    text = args.batch_sizes if args.batch_sizes is not None else DEFAULT_BATCH_SIZES
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DeployError(f"--batch-sizes {text!r}: expected comma-separated positive integers, e.g. "
                          f"{DEFAULT_BATCH_SIZES}") from None
    try:
        return check_batch_sizes(values)
    except DeployError as err:
        raise DeployError(f"--batch-sizes {text!r}: {err}") from None


def load_model(args, exporter):
    """(model of the exporter's framework, the manifest's checkpoint entry, one line on what was done)."""
    from convert_weights import read_source  # the converter's readers: one per file kind

    path = args.checkpoint
    if not path.is_file():
        raise DeployError(f"no such checkpoint file: {path}")
    fmt = format_of(path)
    obj, meta, to_numpy = read_source(path, fmt, args.trust_pickle)
    kwargs = {"to_numpy": to_numpy} if to_numpy is not None else {}
    conv = convert(obj, model=args.model, naming=exporter.NAMING, use_ema=args.ema, metadata=meta, **kwargs)
    source = FRAMEWORK_OF_FILE[fmt]
    converted = source is not None and source != exporter.FRAMEWORK
    model = exporter.model_from_tensors(conv.config, conv.tensors)
    entry = {"path": str(path.resolve()), "sha256": sha256_file(path), "format": fmt, "naming": conv.src_naming,
             "ema": bool(args.ema), "converted_from": source if converted else None, "model_choice": conv.choice}
    how = (f"{conv.choice}; {source} checkpoint converted to {exporter.FRAMEWORK} in memory" if converted
           else conv.choice)
    return model, entry, how


def export(args) -> int:
    sizes = parse_sizes(args)
    if args.out is not None:
        check_destination(args.out, args.force)  # before any heavy work
    exporter = exporter_for(args.format)
    model, checkpoint, how = load_model(args, exporter)
    cfg = model.config
    thresholds = thresholds_entry(args.thresholds, cfg, args.solver) if args.thresholds else None
    print(how, file=sys.stderr)
    created = args.out is None
    if created:
        args.out = new_export_folder(f"{cfg.name}-{args.format}")
        print(f"output: {args.out}", file=sys.stderr)
    try:
        return _write(args, model, sizes, thresholds, checkpoint)
    except BaseException:
        if created:  # the empty folder made for this export: leave no trace
            with contextlib.suppress(OSError):
                args.out.rmdir()
        raise


def _write(args, model, sizes, thresholds, checkpoint) -> int:
    cfg = model.config
    from tqdm import tqdm

    total = cfg.num_exits * (len(sizes) if sizes else 1)
    with tqdm(total=total, desc=f"export {cfg.name} ({args.format})", unit="graph", file=sys.stderr) as bar:
        def progress(msg: str) -> None:
            if msg.startswith("verified"):
                bar.write(msg)
            else:
                bar.set_postfix_str(msg.rsplit(": ", 1)[-1])
                bar.update(1)

        manifest = export_model(model, args.out, args.format, sizes, thresholds=thresholds, checkpoint=checkpoint,
                                force=args.force, verify=not args.no_verify, progress=progress)
    data = manifest.data
    size_mb = sum(g["bytes"] for ex in data["exits"] for g in ex["graphs"]) / 2 ** 20
    print(f"wrote {args.out}: {len(data['files'])} {args.format} graphs ({size_mb:.1f} MB) and manifest.json")
    print(f"model:      {cfg.name}, {cfg.num_exits} exits, cumulative GFLOPs "
          + " / ".join(f"{g:.4g}" for g in manifest.gflops))
    print(f"batch:      {'dynamic' if sizes is None else ','.join(map(str, sizes))}")
    if data["verification"]:
        worst = max(max(c["max_abs_diff"].values()) for c in data["verification"])
        print(f"verified:   every graph against the eager model, max |diff| {worst:.3g}")
    if thresholds:
        kind = f"{thresholds['solver']} budget curve" if thresholds["curve"] else "fixed thresholds"
        print(f"thresholds: {kind} ({thresholds['criterion']})")
    print(f"seconds:    {data['export']['export_seconds']:.1f} export + {data['export']['verify_seconds']:.1f} check")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return export(args)
    except CheckpointMismatchError as err:
        print(f"error: {args.checkpoint} does not fit the model, nothing exported.\n{err}", file=sys.stderr)
    except (DeployError, ConversionError, ConfigError, OSError, ValueError) as err:  # BadFileError is a ValueError
        print(f"error: {err}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
