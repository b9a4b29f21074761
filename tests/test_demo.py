"""tools/demo.py end to end on a very short training run: PyTorch -> .ckpt -> MindSpore, equal answers."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT = "--epochs 2 --max-steps-per-epoch 3 --solvers exact,geometric"


def test_demo_runs_both_frameworks_and_they_agree(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--output", str(out), "--repeat", "1",
                           "--train-args", SHORT], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"=== {step}" in proc.stdout
    report = json.loads((out / "demo.json").read_text())
    ev = report["evaluation"]
    assert ev["equal_top1"] and ev["top1"]["torch"] == ev["top1"]["mindspore"]
    assert len(ev["top1"]["torch"]["test"]) == 3 and ev["gflops"] == sorted(ev["gflops"])
    assert ev["max_logit_diff"] <= 1e-5  # the model's parity on one input (tiny config tolerance)
    rows = report["early_exit"]
    assert 1 <= len(rows) <= 3 and [r["budget_gflops"] for r in rows] == sorted(r["budget_gflops"] for r in rows)
    for r in rows:
        assert r["frameworks_agree"] and r["max_logit_diff"] <= 1e-5
        assert sum(r["exit_counts"]) == 359  # the test split
        for fw in ("PyTorch", "MindSpore"):
            f = r["frameworks"][fw]
            assert f["exits_equal_offline"] and 0.0 <= f["accuracy"] <= 1.0 and f["measured_speedup"] > 0
        assert r["frameworks"]["PyTorch"]["accuracy"] == r["frameworks"]["MindSpore"]["accuracy"]
    assert (out / "demo.md").read_text().startswith("# DVT demo: dvt_tiny_digits")
    assert (out / "torch" / "checkpoint.pth").is_file() and (out / "mindspore" / "checkpoint.ckpt").is_file()
