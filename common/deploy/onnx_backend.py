"""ONNX Runtime backend of the exported-graph runner: one InferenceSession per graph (exit, batch size).

CPU by default; with `device="auto"` the CUDA execution provider is used when this onnxruntime build has it
(onnxruntime-gpu), with `device="cuda"` it is required. Sessions are created on first use from the file's
bytes after checking them against the manifest's sha256, so what runs is what was verified. Needs only
onnxruntime and numpy (no torch).

Two session settings for a cascade, measured here (T2T-ViT-12, batch 64, 2 threads, onnxruntime 1.32, 3 exit
sessions + static backbone + 15 fixed-size sessions in one process):
- every session allocates from one CPU arena registered in onnxruntime's environment
  (`session.use_env_allocators`) instead of an arena of its own: each per-session arena grows to its graph's
  peak and never shrinks, so the memory of a fixed-size export was the sum over its graphs (8.9 GB resident;
  T2T-ViT-14 next to it passed 21 GB), and is now that of the largest (3.3 GB), at the same speed
  (early exit 2334 vs 2337 ms; without any arena 2690 ms);
- intra-op threads do not spin-wait (`session.intra_op.allow_spinning=0`): the stages run one after another,
  and a finished session's spinning pool competes with the next session and the host loop for the cores
  (static backbone 3430 -> 3205 ms, early exit 2607 -> 2407 ms).
"""
from __future__ import annotations

import numpy as np

from .manifest import DeployError, Manifest, verify_file

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_shared_arena = False  # registered once per process (onnxruntime's environment is process-wide)


def _use_shared_cpu_arena(ort, options) -> None:
    """Let sessions made with `options` allocate from one process-wide CPU arena (module docstring)."""
    global _shared_arena
    if not _shared_arena:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # the default arena settings
        _shared_arena = True
    options.add_session_config_entry("session.use_env_allocators", "1")


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers, in priority order, for 'auto' | 'cpu' | 'cuda' (DeployError if unavailable)."""
    device = str(device).lower().split(":")[0]
    if device == "cpu":
        return [CPU]
    if device in ("cuda", "gpu"):
        if CUDA not in available:
            raise DeployError(f"device {device!r}: this onnxruntime has no {CUDA} (available: {', '.join(available)}); "
                              "install onnxruntime-gpu, or use --device cpu")
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise DeployError(f"unknown device {device!r} for onnxruntime; expected auto, cpu or cuda")


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, manifest: Manifest, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort
        self.ort = ort
        self.manifest = manifest
        self.providers = providers_for(device, ort.get_available_providers())
        self.options = ort.SessionOptions()
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _use_shared_cpu_arena(ort, self.options)
        if threads:
            self.options.intra_op_num_threads = int(threads)
            self.options.inter_op_num_threads = 1
        self.threads = threads
        self._sessions: dict = {}
        self._names = {k: ([s.name for s in manifest.inputs(k)], [s.name for s in manifest.outputs(k)])
                       for k in range(manifest.num_exits)}

    def info(self) -> dict:
        return {"onnxruntime": self.ort.__version__, "providers": ",".join(self.providers),
                "threads": self.threads or "default",
                "session": "shared CPU arena, no intra-op spinning"}

    def session(self, k: int, batch: int | None):
        key = (k, batch)
        if key not in self._sessions:
            path = self.manifest.graph_path(k, batch)
            verify_file(path, self.manifest.graph(k, batch)["sha256"])
            try:
                self._sessions[key] = self.ort.InferenceSession(path.read_bytes(), self.options,
                                                                providers=self.providers)
            except Exception as err:  # onnxruntime raises its own exception types for invalid graphs
                raise DeployError(f"onnxruntime cannot load {path}: {type(err).__name__}: {err}") from None
        return self._sessions[key]

    def load_all(self) -> None:
        """Create every session now (instead of on first use), e.g. before timing."""
        for key in self.manifest.graph_keys():
            self.session(*key)

    def run(self, k: int, batch: int | None, feeds: list[np.ndarray]) -> list[np.ndarray]:
        inputs, outputs = self._names[k]
        return self.session(k, batch).run(outputs, dict(zip(inputs, feeds)))
