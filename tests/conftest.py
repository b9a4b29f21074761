"""Session fixtures shared across test files.

Training is the expensive part of the suite on 2 CPU cores, so a trained run that several tests only
read is made once per session here; a test that needs its own run (resume, kills, bad input) makes it.
Tests must treat these folders as read-only: copy a file before changing it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

SHORT_TRAIN = ["--epochs", "2", "--max-steps-per-epoch", "3", "--solvers", "exact,geometric", "--workers", "0"]


@pytest.fixture(scope="session")
def short_torch_run(tmp_path_factory) -> Path:
    """A short PyTorch run of the default model (dvt_tiny_digits on the embedded digits): its output folder,
    with checkpoint.pth, summary.json, thresholds.json and the per-exit outputs of both evaluation splits."""
    from torch_impl import train

    out = tmp_path_factory.mktemp("short_torch_run") / "run"
    assert train.main(SHORT_TRAIN + ["--output", str(out)]) == 0
    return out
