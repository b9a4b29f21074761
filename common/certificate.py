"""A parity certificate for a weight conversion: the source and the converted file, each run in its own
framework on fixed inputs, must give the same per-exit logits, top-1 and exit decisions.

    cert = write_verified(conv, "run/checkpoint.ckpt", "run/checkpoint.pth", write)   # tools/convert_weights.py --verify

The converted file is written under a temporary name beside DST, loaded back by the framework of its format
(`.pth`: torch, `.ckpt`: MindSpore, `.safetensors`: the framework of the naming it was written with) and run
against the source in the source's framework (`torch_impl.stages` / `ms_impl.stages`, imported only when
needed). With `--dtype fp16` / `bf16` the source's weights are rounded the same way first, so the check is
about the conversion (names, layouts, frameworks), not about the chosen precision. Only a passing
conversion is moved to DST, with `<DST>.parity.json` beside it; otherwise `ParityError` and nothing is left.

Tolerance: per-exit logits max |source - converted| <= atol x max(1, max |source logits|), atol 1e-5 (2e-5 for
full-size models, the parity suite's limits); top-1 and exit decisions (threshold sweep of
`common.divergence`) identical. Every stage's margins are recorded (worst stage, first stage past atol).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_write_text
from .convert import FORMAT_SUFFIXES, Conversion, ConversionError, format_of, read_safetensors, sha256_file
from .divergence import compare_stages
from .registry import is_tiny

TOL_TINY, TOL_FULL = 1e-5, 2e-5
NUM_IMAGES, SEED = 4, 0
STAGES_MODULE = {"torch": "torch_impl.stages", "mindspore": "ms_impl.stages"}


class ParityError(ConversionError):
    """The converted checkpoint does not reproduce the source; nothing was written."""


def framework_of(path) -> str:
    """The framework that runs a checkpoint file: its format's, or for .safetensors its naming's."""
    fmt = format_of(path)
    if fmt == "safetensors":
        naming = read_safetensors(path)[1].get("naming", "canonical")
        return "mindspore" if naming in ("mindspore", "msref") else "torch"
    return fmt


def stages_module(framework: str):
    try:
        return importlib.import_module(STAGES_MODULE[framework])
    except ImportError as err:
        raise ConversionError(f"--verify runs the {framework} side but {framework} is not installed ({err})") from None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes if name.endswith(s))


def fixed_inputs(cfg) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return rng.standard_normal((NUM_IMAGES, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(np.float32)


def certify(conv: Conversion, src: Path, converted: Path, *, model: str | None = None,
            use_ema: bool = False) -> dict:
    """Run both files; the certificate as a dict (`passed` says whether it holds)."""
    side = {}
    for key, path in (("source", src), ("converted", converted)):
        framework = framework_of(path)
        side[key] = {"framework": framework, "stages": stages_module(framework)}
    src_model, src_naming = side["source"]["stages"].load_model(src, model, use_ema)
    if conv.dtype != "fp32":
        side["source"]["stages"].round_parameters(src_model, conv.dtype)
    dst_model, dst_naming = side["converted"]["stages"].load_model(converted)
    cfg = src_model.config
    atol = TOL_TINY if is_tiny(cfg.name) else TOL_FULL
    x = fixed_inputs(cfg)
    result = compare_stages(side["source"]["stages"].capture_stages(src_model, x),
                            side["converted"]["stages"].capture_stages(dst_model, x), cfg, atol)
    exits = []
    for e in result["exits"]:
        head = next(s for s in result["stages"] if s["stage"] == f"exit{e['exit']}.head")
        limit = atol * max(1.0, head["scale"])
        exits.append({"exit": e["exit"], "logits_max_abs": head["max_abs"], "logits_max_rel": head["max_rel"],
                      "cosine": head["cosine"], "limit": limit, "top1_agreement": e["top1_agreement"],
                      "within": head["max_abs"] <= limit and e["top1_agreement"] == 1.0})
    decisions = result["exit_decisions"]
    decisions_ok = all(a == 1.0 for a in decisions["agreement"])
    worst = max(result["stages"], key=lambda s: s["max_rel"])
    return {
        "passed": all(e["within"] for e in exits) and decisions_ok,
        "model": cfg.name, "dtype": conv.dtype,
        "source": {"path": str(src), "framework": side["source"]["framework"], "naming": src_naming,
                   "sha256": sha256_file(src), "weights": "rounded to " + conv.dtype if conv.dtype != "fp32" else "as stored"},
        "converted": {"framework": side["converted"]["framework"], "naming": dst_naming},
        "inputs": {"images": NUM_IMAGES, "distribution": "N(0, 1)", "seed": SEED,
                   "shape": [NUM_IMAGES, cfg.in_chans, cfg.img_size, cfg.img_size]},
        "tolerance": {"atol": atol, "rule": "per-exit logits max |source - converted| <= atol x max(1, max |source|); "
                                            "top-1 and exit decisions identical"},
        "exits": exits,
        "exit_decisions": {"thresholds": len(decisions["thresholds"]), "agreement_min": min(decisions["agreement"],
                                                                                           default=1.0)},
        "stages": {"count": len(result["stages"]), "worst": {k: worst[k] for k in ("stage", "max_abs", "max_rel",
                                                                                     "cosine")},
                   "first_past_atol": result["first_divergence"]["stage"] if result["first_divergence"] else None},
        "versions": _versions({s["framework"]: s["stages"] for s in side.values()}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _versions(modules: dict) -> dict:
    out = {"numpy": np.__version__, "python": sys.version.split()[0]}
    for framework, module in modules.items():
        out[framework] = module.framework_version()
    return out


def summary_line(cert: dict) -> str:
    """One line for the converter's printed summary."""
    worst = max(e["logits_max_abs"] for e in cert["exits"])
    return (f"verified:   {cert['source']['framework']} vs {cert['converted']['framework']} on "
            f"{cert['inputs']['images']} fixed images: per-exit logits max |diff| {worst:.2g} (atol "
            f"{cert['tolerance']['atol']:g}), top-1 and exit decisions identical; "
            f"certificate {certificate_path(cert['converted']['path'])}")


def certificate_path(dst) -> Path:
    return Path(f"{dst}.parity.json")


def write_verified(conv: Conversion, src, dst, write: Callable[[Path], object], *, model: str | None = None,
                   use_ema: bool = False) -> dict:
    """`write(path)` the conversion to a temporary file beside `dst`, certify it, then move it to `dst` and
    write `<dst>.parity.json`; ParityError (nothing written) when the certificate does not hold."""
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex}.verify{_suffix(dst)}"
    try:
        write(tmp)
        cert = certify(conv, src, tmp, model=model, use_ema=use_ema)
        if not cert["passed"]:
            bad = [f"exit {e['exit']}: max |diff| {e['logits_max_abs']:.3g} (limit {e['limit']:.3g}), top-1 "
                   f"agreement {e['top1_agreement']:.3f}" for e in cert["exits"] if not e["within"]]
            if cert["exit_decisions"]["agreement_min"] < 1.0:
                bad.append(f"exit decisions agree on {cert['exit_decisions']['agreement_min']:.3f} of the images at "
                           "the worst threshold")
            raise ParityError(f"{dst}: the converted checkpoint does not reproduce {src} "
                              f"({'; '.join(bad)}); nothing written")
        cert["converted"].update(path=str(dst), sha256=sha256_file(tmp))
        os.replace(tmp, dst)
        atomic_write_text(certificate_path(dst), json.dumps(cert, indent=1) + "\n")
        return cert
    finally:
        if tmp.exists():
            tmp.unlink()
