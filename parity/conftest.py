"""Session plumbing of the parity suite: framework settings and the margins table.

At the end of `pytest parity/` (also inside `make test`) the terminal summary prints, per config and
exit, the max absolute and relative differences of logits and intermediates, and the training-step
numbers; the same table goes to outputs/parity_report.md (git-ignored). Nothing here imports a
framework unless it is installed.

The full-size configs other than the three reference cascades run their (batch 1) forward check only
with `DVT_PARITY_ALL=1`; see test_parity_full.py for the measured costs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # paritylib, also under --import-mode=importlib

import paritylib  # noqa: E402


def pytest_configure(config):
    if paritylib.have("mindspore"):  # synchronous CPU launch before any kernel runs (tests/conftest.py)
        from ms_impl.runtime import synchronous_cpu_launch
        synchronous_cpu_launch()
    config.addinivalue_line("markers", "parity_all: full-size forward parity of the non-reference registered "
                                       "configs (opt-in: DVT_PARITY_ALL=1)")


@pytest.fixture(autouse=True, scope="session")
def _frameworks():
    """MindSpore in PYNATIVE mode (GRAPH is compared with PYNATIVE in tests/test_ms_graph.py); torch on
    one thread: its OpenMP workers spin between ops and slow MindSpore's CPU kernels down in the same
    process (and a busy 2-core machine slows 2-thread torch several-fold). Restored afterwards."""
    threads = None
    if paritylib.have("torch"):
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
    if paritylib.have("mindspore"):
        import mindspore as ms
        ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    if threads is not None:
        import torch
        torch.set_num_threads(threads)


def pytest_sessionfinish(session):
    """Under pytest-xdist each worker records its own rows: hand them to the controller."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["parity_rows"] = paritylib.rows_to_json(paritylib.REPORT)


def pytest_testnodedown(node, error):
    """Controller side of pytest-xdist: collect the rows a worker recorded (see pytest_sessionfinish)."""
    rows = getattr(node, "workeroutput", {}).get("parity_rows")
    if rows:
        paritylib.REPORT.extend(paritylib.rows_from_json(rows))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    text = paritylib.report_markdown()
    if not text:
        return
    terminalreporter.section("cross-framework parity: margins per config and exit")
    terminalreporter.write(text)
    try:
        paritylib.REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
        from common.atomic import atomic_write_text
        atomic_write_text(paritylib.REPORT_PATH, text)
        terminalreporter.write_line(f"(written to {paritylib.REPORT_PATH})")
    except OSError as err:  # a read-only checkout still gets the printed table
        terminalreporter.write_line(f"(could not write {paritylib.REPORT_PATH}: {err})")
