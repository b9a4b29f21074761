"""A user on an Ascend box installs only MindSpore; a CUDA user only torch. Keep the packages apart.

Each check imports every module of a package in a fresh interpreter and asserts that the other
framework never entered sys.modules.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib, pkgutil, sys
pkg = importlib.import_module({pkg!r})
for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
    importlib.import_module(info.name)
leaked = sorted(m for m in {forbidden!r} if m in sys.modules)
print("LEAKED", leaked)
"""

BOUNDARIES = [
    ("common", ("torch", "mindspore", "timm", "fvcore", "torchvision")),
    ("torch_impl", ("mindspore",)),
    ("ms_impl", ("torch", "timm", "torchvision", "fvcore")),
]


@pytest.mark.parametrize("pkg, forbidden", BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_package_does_not_import_the_other_framework(pkg, forbidden):
    if not (ROOT / pkg / "__init__.py").exists():
        pytest.skip(f"{pkg} not present")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(pkg=pkg, forbidden=forbidden)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LEAKED []" in proc.stdout, proc.stdout[-2000:]
