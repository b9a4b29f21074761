"""The PyTorch backend of the inference service (`common.serving.backend`): a checkpoint and `forward_adaptive`.

    backend = TorchBackend.from_checkpoint("runs/digits/checkpoint.pth", threads=1)
    out = backend.run(images, thresholds)   # numpy in and out; thresholds (K,) or (B, K) per row

The model comes from the config stored in the checkpoint (or `model`, or the registry config whose shapes the
weights fit, as `torch_impl/evaluate.py` resolves it) and its budget curve from the checkpoint's threshold
curves (`common.serving.backend.curve_from_extras`). `ms_impl.serving` is the MindSpore mirror.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from common.deploy import eval_preprocessing
from common.flops import cumulative_gflops
from common.serving.backend import BackendOutput, curve_from_extras
from torch_impl.checkpoint import read_checkpoint
from torch_impl.evaluate import load_model, resolve_config


class TorchBackend:
    name = "torch"

    def __init__(self, model, curve=None, threads: int | None = None, device: str = "cpu"):
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        cfg = self.config = model.config
        self.model_name, self.num_exits, self.num_classes = cfg.name, cfg.num_exits, cfg.num_classes
        self.gflops = np.asarray(cumulative_gflops(cfg), dtype=np.float64)
        self.input_shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
        self.preprocessing = eval_preprocessing(cfg)
        self.curve = curve

    @classmethod
    def from_checkpoint(cls, path, *, model: str | None = None, threads: int | None = None,
                        solver: str | None = None, device: str = "cpu") -> "TorchBackend":
        raw = read_checkpoint(path)
        args = SimpleNamespace(checkpoint=str(path), model=model, img_size=None, num_classes=None, use_ema=False)
        cfg = resolve_config(args, raw, 1000)
        curve = curve_from_extras(raw, solver, str(path))
        return cls(load_model(args, raw, cfg), curve, threads, device)

    @torch.inference_mode()
    def run(self, images: np.ndarray, thresholds) -> BackendOutput:
        res = self.model.forward_adaptive(torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device),
                                          thresholds)
        return BackendOutput(res.logits.float().cpu().numpy(), res.exit_index.cpu().numpy().astype(np.int64))

    @torch.inference_mode()
    def cascade(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
        out = self.model(x)
        out = out if isinstance(out, (tuple, list)) else (out,)  # single-exit models return one tensor
        return np.stack([lg.float().cpu().numpy() for lg in out])
