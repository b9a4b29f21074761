"""Every stage of a MindSpore DVT on a batch, named as `common.divergence.stage_names` names them.

    model, naming = load_model("run/checkpoint.ckpt")                      # any file and naming; config inferred
    stages = capture_stages(model, images, precision="O1")         # name -> float32 numpy, in order

The mirror of `torch_impl.stages`: forward hooks (PYNATIVE) on each exit's tokenizer, blocks and final norm,
and the cascade's `ExitOutput`s. `precision` "O1" / "O2" applies `ms_impl.amp.apply_amp` at that level in
float16 ("O1-bf16" / "O2-bf16": bfloat16, where the device has the kernels; MindSpore 2.10's CPU has
none for MatMul); "fp32" runs as stored. The model's precision flags are reset afterwards.
"""
from __future__ import annotations

import contextlib

import mindspore as ms
import numpy as np

from common.convert import checkpoint_config, file_metadata
from common.divergence import exit_output_stages, order_stages, stage_name

from .checkpoint import load_checkpoint, read_checkpoint
from .models.dvt import DVT
from .models.factory import skip_init

PRECISIONS = {"fp32": None, "O1": ("O1", "fp16"), "O2": ("O2", "fp16"), "O1-bf16": ("O1", "bf16"),
              "O2-bf16": ("O2", "bf16")}


def load_model(path, model: str | None = None, use_ema: bool = False) -> tuple[DVT, str]:
    """(the DVT a checkpoint file holds, the file's naming): its embedded config, else the registered one its
    tensors fit (`model` chooses), loaded strictly."""
    cfg, _, _ = checkpoint_config(read_checkpoint(path), file_metadata(path), model, use_ema)
    with skip_init():
        net = DVT(cfg)
    info = load_checkpoint(net, path, use_ema=use_ema)
    net.set_train(False)
    return net, info.naming


def _numpy(t) -> np.ndarray:
    return t.astype(ms.float32).asnumpy()


def _capture_batch(model, x) -> dict:
    seen, hooks = {}, []

    def keep(name, pick=lambda out: out):
        def hook(cell, inputs, outputs):
            seen[name] = _numpy(pick(outputs))
        return hook

    for k, exit_ in enumerate(model.exits):
        tokenizer = getattr(exit_, exit_.tokenizer_name)
        hooks.append(tokenizer.register_forward_hook(keep(stage_name(k, "tokenizer"))))
        for i, block in enumerate(exit_.blocks):
            hooks.append(block.register_forward_hook(keep(stage_name(k, "output", i), lambda out: out[0])))
        hooks.append(exit_.norm.register_forward_hook(keep(stage_name(k, "norm"))))
    try:
        outs = model.forward_exits(x)
    finally:
        for h in hooks:
            h.remove()
    seen.update(exit_output_stages(outs, _numpy))
    return seen


@contextlib.contextmanager
def _running(model, precision: str):
    """PYNATIVE (hooks and per-stage outputs need op-by-op execution), eval, `precision` applied; all undone after."""
    if precision not in PRECISIONS:
        raise ValueError(f"MindSpore precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    from .amp import apply_amp, reset_pynative_precision
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model.set_train(False)
    if PRECISIONS[precision] is not None:
        apply_amp(model, *PRECISIONS[precision])
    try:
        yield
    finally:
        if PRECISIONS[precision] is not None:
            apply_amp(model, "O0")
            reset_pynative_precision()  # a forward that raised inside a low-precision cell left it set
        ms.set_context(mode=mode)


def _batches(images: np.ndarray, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield ms.Tensor(np.ascontiguousarray(images[i:i + batch_size]))


def capture_stages(model, images: np.ndarray, precision: str = "fp32", batch_size: int = 8) -> dict:
    """stage name -> float32 array over all `images` (N, C, H, W), in `stage_names` order (PYNATIVE)."""
    with _running(model, precision):
        parts = [_capture_batch(model, x) for x in _batches(images, batch_size)]
    return order_stages({name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, model.config)


def run_logits(model, images: np.ndarray, precision: str = "fp32", batch_size: int = 64) -> list:
    """Per-exit logits (float32 numpy, (N, classes) each) of `images` at `precision`, batch by batch (PYNATIVE)."""
    with _running(model, precision):
        parts = []
        for x in _batches(images, batch_size):
            out = model(x)
            parts.append([_numpy(z) for z in (out if isinstance(out, tuple) else (out,))])
    return [np.concatenate(column) for column in zip(*parts)]


def round_parameters(model, dtype: str) -> None:
    """Round every parameter to `dtype` ('fp16' | 'bf16') and back, as a file written in it holds them (round
    to nearest even, as `tools/convert_weights.py --dtype` writes; in numpy, which has both roundings)."""
    from common.convert import bf16_bits_to_float32, float32_to_bf16_bits
    for _, p in model.parameters_and_names():
        value = p.asnumpy().astype(np.float32)
        value = value.astype(np.float16).astype(np.float32) if dtype == "fp16" else \
            bf16_bits_to_float32(float32_to_bf16_bits(value))
        p.set_data(ms.Tensor(value.reshape(p.shape)).astype(p.dtype))


def framework_version() -> str:
    return ms.__version__
