"""The MindSpore backend of the inference service (`common.serving.backend`): a checkpoint and `forward_adaptive`.
Mirror of `torch_impl.serving`.

    backend = MindSporeBackend.from_checkpoint("runs/ms/checkpoint.ckpt", threads=1, mode="graph")
    out = backend.run(images, thresholds)   # numpy in and out; thresholds (K,) or (B, K) per row

The model comes from the config stored in the checkpoint (or `model`, or the registry config whose shapes the
weights fit, as `ms_impl/evaluate.py` resolves it) and its budget curve from the checkpoint's threshold curves.
In GRAPH mode every exit is compiled once with a dynamic batch axis (`ms_impl.models.adaptive`), so batches of
any size reuse the same graphs.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from mindspore import Tensor

from common.deploy import eval_preprocessing
from common.flops import cumulative_gflops
from common.serving.backend import BackendOutput, curve_from_extras
from ms_impl.checkpoint import read_checkpoint
from ms_impl.distributed import set_cpu_threads
from ms_impl.evaluate import load_model, resolve_config
from ms_impl.runtime import configure


class MindSporeBackend:
    name = "mindspore"

    def __init__(self, model, curve=None):
        self.model = model
        model.set_train(False)
        cfg = self.config = model.config
        self.model_name, self.num_exits, self.num_classes = cfg.name, cfg.num_exits, cfg.num_classes
        self.gflops = np.asarray(cumulative_gflops(cfg), dtype=np.float64)
        self.input_shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
        self.preprocessing = eval_preprocessing(cfg)
        self.curve = curve

    @classmethod
    def from_checkpoint(cls, path, *, model: str | None = None, threads: int | None = None,
                        solver: str | None = None, device: str = "CPU", mode: str = "pynative") -> "MindSporeBackend":
        configure(device, mode)
        if threads and device == "CPU":
            set_cpu_threads(int(threads))
        raw = read_checkpoint(path)
        args = SimpleNamespace(checkpoint=str(path), model=model, img_size=None, num_classes=None, use_ema=False)
        cfg = resolve_config(args, raw, 1000)
        curve = curve_from_extras(raw, solver, str(path))
        return cls(load_model(args, cfg), curve)

    def run(self, images: np.ndarray, thresholds) -> BackendOutput:
        res = self.model.forward_adaptive(Tensor(np.ascontiguousarray(images, np.float32)), thresholds)
        return BackendOutput(res.logits.asnumpy().astype(np.float32), res.exit_index.asnumpy().astype(np.int64))

    def cascade(self, images: np.ndarray) -> np.ndarray:
        out = self.model(Tensor(np.ascontiguousarray(images, np.float32)))
        out = out if isinstance(out, (tuple, list)) else (out,)  # single-exit models return one tensor
        return np.stack([lg.asnumpy().astype(np.float32) for lg in out])
