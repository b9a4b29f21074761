#!/usr/bin/env python
"""Convert DVT weights between PyTorch, MindSpore and safetensors files; validated, atomic, checksummed.

    python tools/convert_weights.py SRC DST [--model NAME] [--naming canonical|mindspore|reference]
                                    [--dtype fp32|fp16|bf16] [--ema] [--force] [--trust-pickle]

Formats follow the file names: `.pth` / `.pth.tar` / `.pt` (also `.tar`, `.bin`) are PyTorch pickles
(the released DVT `model_state_dict` containers, the training script's `state_dict` / `state_dict_ema`,
timm-style `model`, bare state dicts, `module.` prefixes), `.ckpt` is MindSpore, `.safetensors` is
either framework's naming or the reference naming. Any direction works: torch -> MindSpore,
MindSpore -> torch, reference -> either, and to or from safetensors.

What is written:
  .ckpt          MindSpore names (LayerNorm gamma/beta), config JSON and naming as string entries
  .pth / .pt     {'state_dict': canonical names, 'config': ..., 'naming': ...}: torch_impl.create_model
                 loads it; --naming reference writes the released layout {'model_state_dict': ...}
  .safetensors   --naming canonical (default) | mindspore | reference; config JSON in the metadata

--model names the registered config (common.list_models()); without it the config is inferred from the
tensor names and shapes (and a config embedded in the file) and printed as "inferred model: NAME
(naming)"; when several fit, they are listed and nothing is written. Every source tensor must be
consumed, none may be missing and every shape must match, otherwise the full list of problems is printed
and the exit status is 2, with nothing written. Optimizer state and training bookkeeping (adam_m.*,
exp_avg.*, global_step, an `optimizer` entry, unused EMA weights, ...) are dropped with a count.
The output is written to a temporary file and renamed into place; an existing DST needs --force.
Floating tensors are written as fp32 unless --dtype says otherwise (bf16: .pth, .ckpt, .safetensors).
`.pth` files are unpickled with torch's weights_only loader (tensors, containers, numpy values);
--trust-pickle allows other objects, such as the argparse `args` timm's training checkpoints carry.
--verify certifies the conversion: SRC and the converted file run in their own frameworks on fixed inputs;
DST and DST.parity.json (margins, cosine, exit agreement, versions) are written only when the per-exit
logits agree within 1e-5 (2e-5 full size) and top-1 and exit decisions are identical; else exit status 2.

Only the frameworks the two formats need are imported: safetensors <-> .ckpt needs MindSpore alone,
safetensors <-> .pth torch alone, safetensors <-> safetensors neither.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

from common.checkpoints import CheckpointMismatchError  # noqa: E402
from common.config import ConfigError  # noqa: E402
from common.convert import (DTYPES, ConversionError, Conversion, check_target, convert,  # noqa: E402
                            format_of, read_safetensors, sha256_file, write_safetensors)

__all__ = ["build_parser", "main", "read_source", "write_target"]

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_weights.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1], allow_abbrev=False)
    p.add_argument("src", type=Path, help="source checkpoint (.pth/.pth.tar/.pt, .ckpt, .safetensors)")
    p.add_argument("dst", type=Path, help="output file; its suffix chooses the format")
    p.add_argument("--model", help="registered config name (default: inferred from the tensors)")
    p.add_argument("--naming", choices=("canonical", "mindspore", "reference", "msref"),
                   help="names to write (default: mindspore for .ckpt, canonical otherwise)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="floating dtype to write (default fp32)")
    p.add_argument("--ema", action="store_true", help="convert the EMA weights of a training checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let a .pth unpickle arbitrary objects (e.g. timm's argparse `args`); trusted files only")
    p.add_argument("--verify", action="store_true",
                   help="run SRC and the converted file in their frameworks on fixed inputs; write DST and "
                        "DST.parity.json only if they agree (common.certificate), else exit 2")
    return p


# ---- readers / writers: the framework is imported only for its own format --------------------------
def read_source(path: Path, fmt: str, trust_pickle: bool = False):
    """(object, metadata, to_numpy) for `convert`."""
    if fmt == "safetensors":
        tensors, meta = read_safetensors(path)
        return tensors, meta, None
    if fmt == "torch":
        from torch_impl.checkpoint import UntrustedPickleError, read_checkpoint, tensor_to_numpy
        try:
            return read_checkpoint(path, weights_only=not trust_pickle), {}, tensor_to_numpy
        except UntrustedPickleError as err:
            raise ConversionError(f"{err}\n(for a file you trust, pass --trust-pickle)") from None
    from ms_impl.checkpoint import parameter_to_numpy, read_checkpoint
    return read_checkpoint(path), {}, parameter_to_numpy


def write_target(conv: Conversion, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        meta = {"format": "np" if conv.dst_naming == "mindspore" else "pt", **conv.metadata()}
        return write_safetensors(path, conv.tensors, meta, conv.dtype)
    if fmt == "torch":
        from torch_impl.checkpoint import save_state_dict
        return save_state_dict(conv.tensors, path, config=conv.config.to_dict(), naming=conv.dst_naming,
                               dtype=conv.dtype)
    from ms_impl.checkpoint import save_state_dict
    return save_state_dict(conv.tensors, path, metadata=conv.metadata(), dtype=conv.dtype)


FORMAT_LABEL = {"torch": "PyTorch", "mindspore": "MindSpore .ckpt", "safetensors": "safetensors"}


def summary(conv: Conversion, src: Path, src_fmt: str, dst: Path, dst_fmt: str, digest: str) -> str:
    dtypes = ", ".join(f"{n} {k}" for k, n in sorted(conv.src_dtypes.items()))
    lines = [conv.choice,
             f"source:     {src} ({FORMAT_LABEL[src_fmt]}"
             + (f", container {conv.container!r}" if conv.container else "")
             + f", {conv.src_naming} names, {sum(conv.src_dtypes.values())} tensors: {dtypes})"]
    for reason, count in sorted(conv.dropped.items()):
        hint = " (--ema converts the EMA weights)" if "ema" in reason and "ema" not in conv.container else ""
        lines.append(f"dropped:    {count} tensor{'' if count == 1 else 's'} of {reason}{hint}")
    if conv.set_aside:
        lines.append(f"not copied: {', '.join(map(str, conv.set_aside))} (non-weight entries of the container)")
    lines += [f"wrote:      {dst} ({FORMAT_LABEL[dst_fmt]}, {conv.dst_naming} names)",
              f"tensors:    {len(conv.tensors)}",
              f"parameters: {conv.num_parameters:,}",
              f"dtype:      {DTYPES[conv.dtype]}",
              f"sha256:     {digest}"]
    return "\n".join(lines)


def _usual_permissions(path: Path) -> None:
    """0666 minus the umask, as for any file the user creates (MindSpore writes .ckpt read-only 0400,
    the safetensors writer 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    src, dst = args.src, args.dst
    try:
        src_fmt, dst_fmt = format_of(src), format_of(dst)
        naming = check_target(dst_fmt, args.naming, args.dtype)
        if not src.is_file():
            raise ConversionError(f"no such file: {src}")
        if dst.exists() and not args.force:
            raise ConversionError(f"{dst} exists; pass --force to overwrite it")
        if not dst.parent.is_dir():
            raise ConversionError(f"directory {dst.parent} does not exist")
        obj, meta, to_numpy = read_source(src, src_fmt, args.trust_pickle)
        kwargs = {"to_numpy": to_numpy} if to_numpy is not None else {}
        conv = convert(obj, model=args.model, naming=naming, dtype=args.dtype, use_ema=args.ema, metadata=meta,
                       **kwargs)
        if args.verify:
            from common.certificate import certificate_path, write_verified
            cert = write_verified(conv, src, dst, lambda path: write_target(conv, path, dst_fmt), model=args.model,
                                  use_ema=args.ema)
            _usual_permissions(certificate_path(dst))
        else:
            write_target(conv, dst, dst_fmt)
        _usual_permissions(dst)
    except CheckpointMismatchError as err:
        print(f"error: {src} was not converted, nothing written.\n{err}", file=sys.stderr)
        return EXIT_ERROR
    except (ConversionError, ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(summary(conv, src, src_fmt, dst, dst_fmt, sha256_file(dst)))
    if args.verify:
        from common.certificate import summary_line
        print(summary_line(cert))
    return 0


if __name__ == "__main__":
    sys.exit(main())
