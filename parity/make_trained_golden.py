#!/usr/bin/env python
"""Store a trained digits run as a small fixture (parity/golden/digits_trained/) for the mixed-precision test.

    python torch_impl/train.py --output /tmp/digits          # the default run: dvt_tiny_digits, 30 epochs
    python parity/make_trained_golden.py /tmp/digits          # -> parity/golden/digits_trained/

Mixed-precision agreement is a property of a trained model: the 2-epoch test run (`short_torch_run`) predicts
one class for every image with near-identical confidences, so any perturbation (even the other framework in
float32) moves some exit decisions. Kept: the weights rounded to float16 values (exact in float32; 1.1 MB,
canonical names, config in the metadata), the solved threshold curves of every solver (thresholds.json, curves
only), args.yaml (the data set), and the run's test accuracy in MANIFEST.json. The images are the embedded
digits' fixed test split, so nothing else is stored.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

OUT = HERE / "golden" / "digits_trained"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("run", type=Path, help="output folder of a torch_impl/train.py run")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    from common.convert import convert, write_safetensors
    from torch_impl.checkpoint import read_checkpoint, tensor_to_numpy
    conv = convert(read_checkpoint(args.run / "checkpoint.pth"), to_numpy=tensor_to_numpy)
    weights = {k: v.astype(np.float16).astype(np.float32) for k, v in conv.tensors.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_safetensors(args.out / "checkpoint.safetensors", weights, conv.metadata(), dtype="fp16")
    full = json.loads((args.run / "thresholds.json").read_text())
    curves = {"format": full["format"], "version": full["version"], "model": full["model"],
              "solvers": {name: {"curve": entry["curve"]} for name, entry in full["solvers"].items()}}
    (args.out / "thresholds.json").write_text(json.dumps(curves) + "\n")
    import yaml
    run_args = yaml.safe_load((args.run / "args.yaml").read_text())
    run_args.pop("output", None)  # a path of the machine that trained it
    (args.out / "args.yaml").write_text(yaml.safe_dump(run_args, sort_keys=True))
    summary = json.loads((args.run / "summary.json").read_text())
    files = ("checkpoint.safetensors", "thresholds.json", "args.yaml")
    for f in files:
        (args.out / f).chmod(0o644)
    manifest = {"generated_by": "python parity/make_trained_golden.py RUN (RUN: python torch_impl/train.py)",
                "model": conv.config.name, "weights": "float16 values of the run's checkpoint.pth",
                "run_top1": summary["top1"],
                "sha256": {f: hashlib.sha256((args.out / f).read_bytes()).hexdigest() for f in files}}
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {', '.join(files)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
