"""tools/flops.py prints the FLOPs table and keeps the README table generated, not typed."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "tools/flops.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_readme_table_is_generated_and_current():
    proc = _run("--readme", "README.md", "--check")
    assert proc.returncode == 0, proc.stderr


def test_breakdown_reproduces_design_numbers():
    proc = _run("--model", "dvt_t2t_vit_12")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "3" and last[-1] == "3.4975"
    assert "22,461,516 parameters" in proc.stdout


def test_unknown_model_is_a_clear_error():
    proc = _run("--model", "dvt_t2t_vit12")
    assert proc.returncode == 2
    assert "did you mean" in proc.stderr and "dvt_t2t_vit_12" in proc.stderr
