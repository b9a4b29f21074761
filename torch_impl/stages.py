"""Every stage of a PyTorch DVT on a batch, named as `common.divergence.stage_names` names them.

    model, naming = load_model("run/checkpoint.pth")                       # any file and naming; config inferred
    stages = capture_stages(model, images, precision="fp16")       # name -> float32 numpy, in order

Read from the model's own forward: forward hooks on each exit's tokenizer, blocks and final norm, and the
`ExitOutput`s of the cascade (attention logits, reused context and relations, logits), so what is captured
is what the model computes. `precision` "fp16" / "bf16" runs under `torch.autocast` (the training recipe's
mixed precision); "fp32" runs as stored. `ms_impl.stages` is the MindSpore mirror.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from common.convert import checkpoint_config, file_metadata
from common.divergence import exit_output_stages, order_stages, stage_name

from .checkpoint import load_checkpoint, read_checkpoint
from .models.dvt import DVT

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_model(path, model: str | None = None, use_ema: bool = False) -> tuple[DVT, str]:
    """(the DVT a checkpoint file holds, the file's naming): its embedded config, else the registered one its
    tensors fit (`model` chooses), loaded strictly."""
    cfg, _, _ = checkpoint_config(read_checkpoint(path), file_metadata(path), model, use_ema)
    net = DVT(cfg)
    info = load_checkpoint(net, path, use_ema=use_ema)
    return net.eval(), info.naming


def _precision(model, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"torch precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=PRECISIONS[precision])


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _capture_batch(model, x: torch.Tensor, precision: str) -> dict:
    seen, hooks = {}, []

    def keep(name, pick=lambda out: out):
        return lambda module, args, out: seen.__setitem__(name, _numpy(pick(out)))

    for k, exit_ in enumerate(model.exits):
        tokenizer = exit_.tokens_to_token if hasattr(exit_, "tokens_to_token") else exit_.patch_embed
        hooks.append(tokenizer.register_forward_hook(keep(stage_name(k, "tokenizer"))))
        for i, block in enumerate(exit_.blocks):
            hooks.append(block.register_forward_hook(keep(stage_name(k, "output", i), lambda out: out[0])))
        hooks.append(exit_.norm.register_forward_hook(keep(stage_name(k, "norm"))))
    try:
        with torch.no_grad(), _precision(model, precision):
            outs = model.forward_exits(x)
    finally:
        for h in hooks:
            h.remove()
    seen.update(exit_output_stages(outs, _numpy))
    return seen


def capture_stages(model, images: np.ndarray, precision: str = "fp32", batch_size: int = 8) -> dict:
    """stage name -> float32 array over all `images` (N, C, H, W), in `stage_names` order."""
    model.eval()
    device = next(model.parameters()).device
    parts = [_capture_batch(model, torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device),
                            precision) for i in range(0, len(images), batch_size)]
    return order_stages({name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, model.config)


def run_logits(model, images: np.ndarray, precision: str = "fp32", batch_size: int = 64) -> list:
    """Per-exit logits (float32 numpy, (N, classes) each) of `images` at `precision`, batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad(), _precision(model, precision):
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
            parts.append([_numpy(out.logits) for out in model.forward_exits(x)])
    return [np.concatenate(column) for column in zip(*parts)]


def round_parameters(model, dtype: str) -> None:
    """Round every stored floating tensor to `dtype` ('fp16' | 'bf16') and back, as a file written in it holds
    them (round to nearest even, as `tools/convert_weights.py --dtype` writes)."""
    target = PRECISIONS[dtype]
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.to(target).to(t.dtype))


def framework_version() -> str:
    return torch.__version__
