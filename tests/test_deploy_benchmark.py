"""tools/benchmark.py --framework onnxruntime on a tiny config: it exports, times and reports what it says.

A measurement, not a speed test: nothing here asserts a time, only the split, the padding it reports (as
`common.deploy.batching` predicts) and the report's structure."""
import json
import sys
from pathlib import Path

import pytest

from common.deploy.batching import padded_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import benchmark as tool  # noqa: E402


def test_exported_benchmark_on_a_tiny_config(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench"
    assert tool.main(["--framework", "onnxruntime", "--models", "dvt_tiny_t2t", "--batch-sizes", "10",
                      "--export-sizes", "1,4,8", "--mixtures", "0.6/0.25/0.15", "--warmup", "0", "--repeat", "1",
                      "--threads", "1", "--out", str(out), "--export-dir", str(tmp_path / "exports")]) == 0
    printed = capsys.readouterr().out
    assert "FLOPs-predicted" in printed and "padding cost vs dynamic batch" in printed
    report = json.loads((out / "benchmark_onnxruntime.json").read_text())
    assert (out / "benchmark_onnxruntime.md").read_text().startswith("# DVT exported-graph benchmark")
    (run,) = report["runs"]
    assert run["model"] == "dvt_tiny_t2t" and run["static_model"] == "t2t_vit_tiny" and run["sizes"] == [1, 4, 8]
    settings = {m["setting"]: m for m in run["measurements"]}
    assert settings["adaptive 0.6/0.25/0.15, dynamic batch"]["exit_counts"] == [6, 3, 1]
    for policy in ("pad", "fit"):
        assert settings[f"adaptive 0.6/0.25/0.15, fixed sizes 1,4,8 ({policy})"]["exit_counts"] == [6, 3, 1]
        assert settings[f"adaptive 0/0/1, fixed sizes 1,4,8 ({policy})"]["exit_counts"] == [0, 0, 10]
    pad = {p["setting"]: p for p in run["padding"]}
    # "pad": 10 rows -> 8 + (2 padded to 4); 4 rows -> one graph of 4; 1 row -> size 1
    fixed = pad["adaptive 0.6/0.25/0.15, fixed sizes 1,4,8 (pad)"]
    assert fixed["padded_rows"] == [padded_rows(10, (1, 4, 8)), 0, 0] == [2, 0, 0]
    assert fixed["graph_calls"] == [2, 1, 1]
    # "fit": 10 rows -> 8 + 1 + 1 (no pad row), the rest as before
    fit = pad["adaptive 0.6/0.25/0.15, fixed sizes 1,4,8 (fit)"]
    assert fit["padded_rows"] == [0, 0, 0] and fit["graph_calls"] == [3, 1, 1]
    speed = {c["setting"]: c for c in run["speedups"]}
    assert speed["adaptive 0.6/0.25/0.15, dynamic batch"]["baseline"] == "static t2t_vit_tiny, dynamic batch"
    assert speed["adaptive 0.6/0.25/0.15, fixed sizes 1,4,8 (pad)"]["baseline"] == "static t2t_vit_tiny, batch 10 graph"
    assert speed["adaptive 0.6/0.25/0.15, dynamic batch"]["predicted_speedup"] == pytest.approx(
        0.004 / ((6 * 0.002117652 + 3 * 0.00526972 + 0.00945609) / 10), rel=1e-3)
    assert sorted(p.name for p in (tmp_path / "exports" / "onnxruntime").iterdir()) == [
        "dvt_tiny_t2t_dynamic", "dvt_tiny_t2t_fixed", "t2t_vit_tiny_dynamic", "t2t_vit_tiny_fixed"]
