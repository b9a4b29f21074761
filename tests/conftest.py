"""Session fixtures shared across test files, and the plumbing that lets `make test` run on two workers.

Training is the expensive part of the suite on 2 CPU cores, so a trained run that several tests only
read is made once per session here; a test that needs its own run (resume, kills, bad input) makes it.
Tests must treat these folders as read-only: copy a file before changing it.

`make test` runs the suite on pytest-xdist workers (`--dist loadfile`: a file's tests stay on one worker,
so module fixtures are built once). A shared run is then made once for all workers: the first worker
that needs it builds it under a file lock in the session's common temporary folder, the others wait and
read it (`shared_run`). Each worker runs torch on one thread (and so do the processes tests start), so
two workers do not oversubscribe the two cores. The slowest files are collected first, so that the
scheduler never leaves one of them for last.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

SHORT_TRAIN = ["--epochs", "2", "--max-steps-per-epoch", "3", "--solvers", "exact,geometric", "--workers", "0"]

# The files that take longest on 2 cores (measured with --durations), slowest first; the rest keep their order.
# (A MindSpore state leak once failed parity files that ran late in a worker: a bfloat16 forward that raised
# left PYNATIVE's process-wide precision set; ms_impl.amp.reset_pynative_precision, test_ms_amp.py.)
SLOW_FIRST = (
    "parity/test_parity_tiny.py",
    "tests/test_ms_train_default.py",
    "tests/test_torch_train_default.py",
    "tests/test_ms_train_processes.py",
    "parity/test_parity_export_full.py",
    "parity/test_parity_export.py",
    "tests/test_demo.py",
    "parity/test_parity_full.py",
    "tests/test_ms_train.py",
    "tests/test_ms_graph.py",
)


def under_xdist() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def synchronous_mindspore() -> None:
    """MindSpore's CPU kernels launched synchronously in this process, before any test runs a kernel (it
    cannot be switched later): PYNATIVE runs ~6x faster on 2 cores (ms_impl.runtime.synchronous_cpu_launch)."""
    try:
        from ms_impl.runtime import synchronous_cpu_launch
    except ImportError:
        return
    synchronous_cpu_launch()


def pytest_configure(config):
    synchronous_mindspore()
    if under_xdist():  # one thread per worker (and per process it starts): two workers fill two cores
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        try:
            import torch
        except ImportError:
            return
        torch.set_num_threads(1)


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    root = Path(str(config.rootpath))

    def key(indexed):
        index, item = indexed
        rel = Path(str(item.path)).relative_to(root).as_posix() if Path(str(item.path)).is_relative_to(root) else ""
        return (rank.get(rel, len(rank)), index)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


def shared_root(tmp_path_factory) -> Path:
    """A folder of this test session that every xdist worker sees (the base temp folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if under_xdist() else base


def shared_run(tmp_path_factory, name: str, make) -> Path:
    """`make(folder)` once per session for all workers; returns the folder. A failed or half-made folder
    is removed and made again by the next caller (and the failure is raised)."""
    root = shared_root(tmp_path_factory)
    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if out.exists():
                shutil.rmtree(out)
            make(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def short_torch_run(tmp_path_factory) -> Path:
    """A short PyTorch run of the default model (dvt_tiny_digits on the embedded digits): its output folder,
    with checkpoint.pth, summary.json, thresholds.json and the per-exit outputs of both evaluation splits."""
    from torch_impl import train

    def make(out: Path) -> None:
        assert train.main(SHORT_TRAIN + ["--output", str(out)]) == 0

    return shared_run(tmp_path_factory, "short_torch_run", make)
