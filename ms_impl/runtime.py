"""Where and how MindSpore runs: the device target and execution mode behind tools' `--device`/`--mode`.

MindSpore binds one device target per process and wants it before the first kernel runs, so tools call
`configure` first thing. Accepts the names users type for torch too ('cuda', 'npu').

On the CPU target `configure` also switches MindSpore to synchronous kernel launch (`synchronous_cpu_launch`).
"""
from __future__ import annotations

import mindspore as ms

DEVICES = {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU", "ascend": "Ascend", "npu": "Ascend"}
MODES = {"pynative": ms.PYNATIVE_MODE, "graph": ms.GRAPH_MODE}


def device_target(device: str) -> str:
    """'cpu' | 'gpu'/'cuda' | 'ascend'/'npu' (any case) -> MindSpore's device target name."""
    key = str(device).lower().split(":")[0]
    if key not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {sorted(DEVICES)}")
    return DEVICES[key]


def synchronous_cpu_launch() -> None:
    """Launch CPU kernels synchronously (`mindspore.runtime.launch_blocking`); takes effect only before the
    first kernel of the process runs.

    Why: MindSpore's default asynchronous launch hands every PYNATIVE op to a pipeline of runtime threads that
    wait busily; on a 2-core CPU they compete with the kernels themselves. Measured here (MindSpore 2.10,
    dvt_tiny_t2t forward at batch 10, PYNATIVE, one kernel thread): 970 ms per forward asynchronous, 155 ms
    synchronous, identical outputs; GRAPH mode 52 ms -> 45 ms; a GRAPH training step unchanged. On Ascend and
    GPU the asynchronous launch is what hides the host, so this is for the CPU target only."""
    from mindspore._c_expression import RuntimeConf
    if not RuntimeConf.get_instance().is_launch_blocking():
        ms.runtime.launch_blocking()


def configure(device: str | None = None, mode: str | None = None, device_id: int | None = None) -> None:
    """Set the device target (before any kernel has run) and/or the mode ('pynative' | 'graph')."""
    if device is not None:
        if device_id is None and ":" in str(device):
            device_id = int(str(device).split(":", 1)[1])
        target = device_target(device)
        try:
            ms.set_device(target, device_id)
        except RuntimeError as err:  # the runtime is up: fine when it already runs on that target
            if ms.get_context("device_target") != target:
                raise ValueError(f"MindSpore already runs on {ms.get_context('device_target')} in this process; "
                                 f"{target} needs a new process") from err
        if target == "CPU":
            synchronous_cpu_launch()
    if mode is not None:
        if mode.lower() not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        ms.set_context(mode=MODES[mode.lower()])
