"""Which code runs an export's graphs: ONNX Runtime for `.onnx`, MindSpore for `.mindir`.

The ONNX Runtime backend lives here (it needs onnxruntime only: an ONNX export runs where neither torch nor
MindSpore is installed); the MINDIR one lives with the MindSpore code (`ms_impl.export.MindirBackend`) and is
imported only when asked for.
"""
from __future__ import annotations

import importlib

from .manifest import DeployError, Manifest

# backend -> (module, class, graph format it runs)
BACKENDS = {"onnxruntime": ("common.deploy.onnx_backend", "OnnxRuntimeBackend", "onnx"),
            "mindspore": ("ms_impl.export", "MindirBackend", "mindir")}
ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "mindir": "mindspore", "ms": "mindspore"}
INSTALL_HINT = {"onnxruntime": "pip install onnxruntime (or onnxruntime-gpu for CUDA)",
                "mindspore": "pip install mindspore"}


def backend_name(backend: str, manifest: Manifest) -> str:
    """The canonical backend for `backend` ('auto' follows the manifest's graph format)."""
    if backend == "auto":
        return next(name for name, (_, _, fmt) in BACKENDS.items() if fmt == manifest.graph_format)
    name = ALIASES.get(str(backend).lower(), str(backend).lower())
    if name not in BACKENDS:
        raise DeployError(f"unknown backend {backend!r}; expected auto, {', '.join(BACKENDS)} "
                          f"(or {', '.join(ALIASES)})")
    fmt = BACKENDS[name][2]
    if fmt != manifest.graph_format:
        raise DeployError(f"backend {name} runs {fmt} graphs; {manifest.directory} holds {manifest.graph_format} "
                          "graphs")
    return name


def create_backend(manifest: Manifest, backend: str = "auto", *, device: str = "auto", threads: int | None = None):
    name = backend_name(backend, manifest)
    module, cls, _ = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise DeployError(f"the {name} backend needs {err.name or name}, which is not installed: "
                          f"{INSTALL_HINT[name]}") from None
    return getattr(mod, cls)(manifest, device=device, threads=threads)
