"""Device, execution mode and data parallelism for `ms_impl/train.py`: HCCL on Ascend, NCCL on GPU, and
MindSpore's CPU collectives in dynamic-cluster mode, all launched by `msrun`.

    msrun --worker_num=8 --local_worker_num=8 --master_addr=127.0.0.1 --master_port=8118 \\
          --log_dir=msrun_log --join=True python ms_impl/train.py --device Ascend ...
    dist = init_distributed("Ascend", "graph")  # reads MS_WORKER_NUM / MS_ROLE / RANK_ID set by msrun
    if dist.is_main: ...                        # only rank 0 writes files
    dist.barrier(); dist.close()

msrun starts one process per card with MS_ROLE=MS_WORKER, MS_WORKER_NUM, MS_SCHED_HOST/PORT, RANK_ID,
MS_NODE_ID and DEVICE_ID; `mindspore.communication.init()` joins them (the backend follows the device).
Without msrun (no MS_WORKER_NUM, or 1) everything is a no-op on one process.
Data parallel: `set_auto_parallel_context(parallel_mode=DATA_PARALLEL, gradients_mean=True)` and a
`DistributedGradReducer` (mean of the gradients) inside the train step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import mindspore as ms
import numpy as np

from .runtime import configure

DEVICE_NAMES = ("CPU", "GPU", "Ascend")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: str = "CPU"
    mode: str = "graph"
    scheduler: bool = False  # msrun's scheduler process: it serves the cluster and trains nothing

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def grad_reducer(self, params):
        """The mean all-reduce of the gradients of `params`, or None on one process."""
        if not self.distributed:
            return None
        from mindspore import nn
        return nn.DistributedGradReducer(params, mean=True, degree=self.world_size)

    def barrier(self) -> None:
        """All processes meet here. `comm_func.barrier` and the eager `comm_func.all_reduce` have no CPU kernel
        ("CreateKernelMod" errors); a one-element all-reduce compiled as a graph works on every backend."""
        if self.distributed:
            global _BARRIER
            if _BARRIER is None:
                _BARRIER = _AllReduce()
            _BARRIER(ms.Tensor(np.zeros(1, np.float32))).asnumpy()

    def all_sum(self, value: float) -> float:
        """The sum of `value` over all processes (the value itself on one process)."""
        if not self.distributed:
            return float(value)
        global _BARRIER
        if _BARRIER is None:
            _BARRIER = _AllReduce()
        return float(_BARRIER(ms.Tensor(np.array([value], np.float32))).asnumpy()[0])

    def close(self) -> None:
        if self.distributed and not self.scheduler:
            from mindspore.communication import release
            try:
                release()
            except RuntimeError:  # already released / not supported on this backend
                pass


class _AllReduce(ms.nn.Cell):
    def __init__(self):
        super().__init__()
        self.all_reduce = ms.ops.AllReduce()

    @ms.jit
    def construct(self, x):
        return self.all_reduce(x)


_BARRIER = None


def _available(device: str) -> bool:
    """Whether this MindSpore build loaded the device's plugin. Asks MSContext directly: the public
    `device_context.<dev>.is_available()` answers the same but logs the plugin's loading error (a
    missing libmindspore_ascend...so on every CPU-only run with --device auto)."""
    try:
        from mindspore._c_expression import MSContext
        return bool(MSContext.get_instance().is_pkg_support_device(device))
    except (ImportError, AttributeError):  # the private API moved: fall back to the public one
        pass
    try:
        module = {"GPU": ms.device_context.gpu, "Ascend": ms.device_context.ascend}[device]
        return bool(module.is_available())
    except Exception:  # missing plugin libraries raise, not return False
        return False


def pick_device(name: str = "auto") -> str:
    """'auto' -> Ascend, else GPU when present, else CPU; a named accelerator that is absent is an error."""
    if name in ("auto", None, ""):
        for device in ("Ascend", "GPU"):
            if _available(device):
                return device
        return "CPU"
    if name not in DEVICE_NAMES:
        raise RuntimeError(f"--device {name!r}: expected one of auto, {', '.join(DEVICE_NAMES)}")
    if name != "CPU" and not _available(name):
        raise RuntimeError(f"--device {name}: no {name} device is available to this MindSpore build "
                           f"(mindspore {ms.__version__}); use --device CPU or auto")
    return name


def set_cpu_threads(threads: int) -> None:
    """MindSpore's CPU kernel thread pool size (0: leave MindSpore's default, 25 threads).

    1 is the trainer's default: the multi-threaded CPU kernels (reductions such as LayerNormGrad's
    parameter gradients) add partial sums in a thread-dependent order, so two runs of the same seed drift
    apart (max |weight diff| 1.6e-2 after 3 epochs of the digits model, measured); with one thread they are
    bitwise equal. The cost on an idle 2-core machine is ~15% per step (0.42-0.47 s against 0.37-0.40 s for
    the digits model at batch 64, measured); with other jobs on the cores, none. The pool can be sized once
    per process: later calls with another size keep the first one."""
    if threads < 0:
        raise ValueError(f"--cpu-threads must be >= 0, got {threads}")
    if threads == 0:
        return
    from mindspore._c_expression import RuntimeConf
    if RuntimeConf.get_instance().is_op_threads_num_configured():
        return
    ms.device_context.cpu.op_tuning.threads_num(threads)


def launched_by_msrun() -> bool:
    """msrun sets MS_ROLE (MS_SCHED for its scheduler process, MS_WORKER for the workers) and MS_WORKER_NUM."""
    return os.environ.get("MS_ROLE") in ("MS_SCHED", "MS_WORKER") and int(os.environ.get("MS_WORKER_NUM", "1")) > 1


def init_distributed(device: str = "auto", mode: str = "graph", cpu_threads: int = 1) -> DistInfo:
    """Set device, mode (and CPU kernel threads); under msrun join the cluster and switch on data parallelism."""
    target = pick_device(device)
    if target == "CPU":
        set_cpu_threads(cpu_threads)
    device_id = int(os.environ.get("DEVICE_ID", "0")) if target != "CPU" else None
    configure(target, mode, device_id)
    if not launched_by_msrun():
        return DistInfo(0, 1, target, mode)
    from mindspore.communication import get_group_size, get_rank, init
    init()  # the scheduler process returns from here when the workers are done
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return DistInfo(0, int(os.environ["MS_WORKER_NUM"]), target, mode, scheduler=True)
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    return DistInfo(rank, size, target, mode)
