#!/usr/bin/env python
"""Write the golden fixtures of the parity suite (parity/golden/) from PyTorch. Deterministic.

    python parity/make_golden.py            # (re)write parity/golden/
    python parity/make_golden.py --check    # regenerate in memory, compare with the stored files

For each config in GOLDEN_CONFIGS: the registry's torch model built under a fixed seed, every parameter
perturbed by N(0, 0.02) (so no bias is zero), then rounded to float16 *as the weights*: the stored
`NAME.safetensors` (canonical names, config JSON in the metadata) holds float16 values that float32
represents exactly, which halves the file without changing what the model computes. `NAME.npz` holds
the inputs (random and structured images, float32) and torch's float32 per-exit logits for them.
MANIFEST.json lists sha256 sums and the versions that produced the files.

A machine with one framework checks it against these (parity/test_parity_golden.py, 1e-5). Regenerate
only when a model's definition changes on purpose, and say so in the commit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import paritylib  # noqa: E402

GOLDEN_CONFIGS = ("dvt_tiny_deit_2exit", "t2t_vit_tiny")  # both reuses + patch tokens; Performer T2T
N_RANDOM = 2
SIZE_LIMIT = 1_000_000  # bytes, all golden files together


def golden_seed(name: str) -> int:
    return paritylib.seed_of(name, "golden")


def golden_weights(name: str) -> dict:
    """canonical name -> float16 array: the seeded, perturbed torch model's weights rounded to fp16."""
    model = paritylib.torch_model(name, golden_seed(name))
    return {k: v.astype(np.float16) for k, v in paritylib.torch_state(model).items()}


def golden_inputs(name: str) -> np.ndarray:
    from common import get_config
    return paritylib.images(get_config(name), N_RANDOM, seed=golden_seed(name))


def golden_logits(name: str, weights: dict, x: np.ndarray) -> list:
    import torch
    import torch_impl
    from common.exits import per_exit
    model = torch_impl.create_model(name).eval()
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()})
    with torch.no_grad():
        return [z.numpy() for z in per_exit(model(torch.from_numpy(x)))]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(name: str):
    weights = golden_weights(name)
    x = golden_inputs(name)
    return weights, x, golden_logits(name, weights, x)


def write(out_dir: Path) -> dict:
    import torch
    from safetensors.numpy import save_file

    from common import get_config
    from common.atomic import atomic_path, atomic_write_text
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"generated_by": "python parity/make_golden.py", "torch": torch.__version__,
                "numpy": np.__version__, "tolerance": paritylib.TOL_GOLDEN, "configs": {}}
    for name in GOLDEN_CONFIGS:
        weights, x, logits = build(name)
        meta = {"format": "pt", "naming": "canonical", "config": json.dumps(get_config(name).to_dict()),
                "note": "float16 storage of float32 weights (exactly representable); parity/make_golden.py"}
        with atomic_path(out_dir / f"{name}.safetensors", ".safetensors") as tmp:
            save_file(weights, str(tmp), metadata=meta)
        arrays = {"images": x, **{f"logits_exit{k}": z for k, z in enumerate(logits)}}
        with atomic_path(out_dir / f"{name}.npz", ".npz") as tmp:
            np.savez(tmp, **arrays)
        manifest["configs"][name] = {
            "seed": golden_seed(name), "exits": len(logits), "images": int(x.shape[0]),
            "files": {f: sha256(out_dir / f) for f in (f"{name}.safetensors", f"{name}.npz")}}
    atomic_write_text(out_dir / "MANIFEST.json", json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    if total > SIZE_LIMIT:
        raise SystemExit(f"golden files take {total} bytes, over the {SIZE_LIMIT} limit")
    return manifest


def check(out_dir: Path) -> list[str]:
    """Regenerate in memory; weights must be bit-exact, logits within the golden tolerance."""
    from safetensors.numpy import load_file
    problems = []
    for name in GOLDEN_CONFIGS:
        weights, x, logits = build(name)
        stored = load_file(str(out_dir / f"{name}.safetensors"))
        if set(stored) != set(weights) or any(not np.array_equal(stored[k], weights[k]) for k in weights):
            problems.append(f"{name}: weights differ from the stored ones")
        npz = np.load(out_dir / f"{name}.npz")
        if not np.array_equal(npz["images"], x):
            problems.append(f"{name}: images differ")
        for k, z in enumerate(logits):
            diff = float(np.abs(npz[f"logits_exit{k}"] - z).max())
            if diff > paritylib.TOL_GOLDEN:
                problems.append(f"{name}: exit {k} logits differ by {diff:.2e}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--check", action="store_true", help="compare with the stored files instead of writing")
    p.add_argument("--out", type=Path, default=paritylib.GOLDEN_DIR)
    args = p.parse_args(argv)
    if args.check:
        problems = check(args.out)
        print("\n".join(problems) if problems else f"golden fixtures in {args.out} are reproduced")
        return 1 if problems else 0
    manifest = write(args.out)
    for name, entry in manifest["configs"].items():
        print(f"{name}: {entry['exits']} exits, {entry['images']} images -> {', '.join(entry['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
