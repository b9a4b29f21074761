#!/usr/bin/env python
"""Classify image files with an exported DVT (tools/export.py): real early exit over the exported graphs.

    python tools/infer.py DIR (--image-folder D | IMAGE ...) [--budget GFLOPS | --thresholds T1,T2]
        [--batch-size B] --out results.jsonl [--backend auto|onnxruntime|mindspore] [--device auto|cpu|cuda]
        [--threads N] [--batching pad|fit] [--force]

Each image is read and preprocessed as DIR/manifest.json says, which is what `torch_impl/evaluate.py` does
(timm's evaluation transform: resize, centre crop, normalise; `common.deploy.preprocess`), so a folder of
images gives the same answers through both. Thresholds: `--thresholds` (one per exit but the last), or
`--budget` (GFLOPs per image) on the budget curve exported with the model, else the fixed thresholds the
export carries. `--out` gets one JSON line per image, in input order:

    {"path": ..., "class": 3, "confidence": 0.97, "exit": 1, "gflops": 0.4725}

(`exit` is 1-based, `gflops` the cumulative cost up to that exit); at the end the exit counts, average
GFLOPs and images/s are printed. The file is written whole at the end (temporary file, renamed): an error
or an interruption leaves none; an existing --out needs --force. An ONNX export needs only this package's
`common` and onnxruntime (no torch, no MindSpore). Bad input (no manifest, a graph whose sha256 does not
match, a missing graph, an unreadable image) exits with status 2 and a message.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

import numpy as np  # noqa: E402

from common.adaptive import scores  # noqa: E402
from common.atomic import atomic_write  # noqa: E402
from common.deploy import DeployError, load_runner, preprocess_image  # noqa: E402
from common.deploy.preprocess import list_images, open_image  # noqa: E402
from common.deploy.thresholds import parse_numbers, run_thresholds  # noqa: E402
from common.readers import check_image_header  # noqa: E402

EXIT_ERROR = 2
DYNAMIC_BATCH = 64  # images per runner call when the export has a dynamic batch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infer.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("export_dir", type=Path, help="folder written by tools/export.py")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--image-folder", default=None, help="classify every image file under this folder (recursively)")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--budget", type=float, default=None, help="GFLOPs per image, on the exported budget curve")
    choice.add_argument("--thresholds", default=None, help="exit thresholds T1,T2,... (one per exit but the last)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per runner call (default: the largest exported batch size, or 64)")
    p.add_argument("--out", type=Path, required=True, help="results file (JSON lines)")
    p.add_argument("--backend", default="auto", help="auto (from the manifest), onnxruntime or mindspore")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (ONNX Runtime's CUDA provider) | ascend")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: its own)")
    p.add_argument("--batching", default="pad", choices=("pad", "fit"),
                   help="fixed batch sizes: pad the rows of an exit to the smallest size that holds them (pad), "
                        "or cover them with the fewest pad rows and calls (fit)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def image_paths(args) -> list[str]:
    if bool(args.images) == bool(args.image_folder):
        raise DeployError("give either image files or --image-folder (one of them)")
    paths = list_images(args.image_folder) if args.image_folder else list(args.images)
    for p in paths:  # fail in seconds, before any inference, on a path that is not an image
        if not Path(p).is_file():
            raise DeployError(f"no such image file: {p}")
        check_image_header(p)
    return paths


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise DeployError(f"{out} exists; pass --force to replace it (nothing was written)")
    if out.exists() and out.is_dir():
        raise DeployError(f"--out {out} is a folder; expected a file name (results.jsonl)")
    if not out.resolve().parent.is_dir():
        raise DeployError(f"cannot write {out}: folder {out.resolve().parent} does not exist")


def infer(args) -> dict:
    check_out(args.out, args.force)
    if args.batch_size is not None and args.batch_size < 1:
        raise DeployError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = image_paths(args)
    runner = load_runner(args.export_dir, args.backend, device=args.device, threads=args.threads,
                         batching=args.batching)
    manifest = runner.manifest
    thresholds = None
    if args.thresholds is not None:
        thresholds = parse_numbers(args.thresholds)
        if not thresholds:
            raise DeployError(f"--thresholds {args.thresholds!r}: expected numbers T1,T2,... "
                              f"({manifest.num_exits - 1} for this {manifest.num_exits}-exit model)")
    try:
        t, criterion = run_thresholds(manifest.thresholds, manifest.num_exits, thresholds, None, args.budget)
    except ValueError as err:  # resolve_thresholds' messages name what was expected
        raise DeployError(str(err)) from None
    batch = args.batch_size or (manifest.batch_sizes[-1] if manifest.batch_sizes else DYNAMIC_BATCH)
    from tqdm import tqdm

    counts = np.zeros(manifest.num_exits, dtype=np.int64)
    total_gflops, model_s = 0.0, 0.0
    start = time.perf_counter()

    def write(f) -> None:
        nonlocal total_gflops, model_s
        with tqdm(total=len(paths), desc=f"infer {manifest.name}", unit="img", file=sys.stderr) as bar:
            for i in range(0, len(paths), batch):
                chunk = paths[i:i + batch]
                x = np.stack([preprocess_image(open_image(p), manifest) for p in chunk])
                t0 = time.perf_counter()
                res = runner.run(x, t, criterion)
                model_s += time.perf_counter() - t0
                conf = scores(res.logits, "confidence")
                for p, c, s, e, g in zip(chunk, res.logits.argmax(1), conf, res.exit_index, res.gflops):
                    f.write((json.dumps({"path": p, "class": int(c), "confidence": float(s), "exit": int(e) + 1,
                                         "gflops": float(g)}) + "\n").encode())
                counts[:] += np.asarray(res.exit_counts)
                total_gflops += float(res.gflops.sum())
                bar.update(len(chunk))

    atomic_write(args.out, write)
    elapsed = time.perf_counter() - start
    n = len(paths)
    summary = {"images": n, "exit_counts": counts.tolist(), "average_gflops": total_gflops / n,
               "images_per_s": n / elapsed, "model_images_per_s": n / model_s if model_s else float("nan"),
               "thresholds": [float(v) for v in t], "criterion": criterion, "backend": runner.backend.name}
    print(f"{n} images -> {args.out}")
    print("exit counts: " + ", ".join(f"exit {k + 1}: {c} ({100 * c / n:.1f}%)" for k, c in enumerate(counts)))
    print(f"average GFLOPs per image: {summary['average_gflops']:.6g} (last exit {manifest.gflops[-1]:.6g})")
    print(f"images/s: {summary['images_per_s']:.1f} end to end, {summary['model_images_per_s']:.1f} in the graphs "
          f"({runner.backend.name}, batch {batch})")
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        infer(args)
    except (DeployError, OSError, ValueError) as err:  # BadFileError (an image that does not read) is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
