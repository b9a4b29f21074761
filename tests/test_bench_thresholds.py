"""Generalisation at matched cost (hand example) and tools/bench_thresholds.py on a small synthetic source."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from common.thresholds import ExitScores, save_exit_outputs, synthetic_exit_outputs
from common.thresholds.generalisation import CurvePoints, accuracy_at, compare_matched_cost, matching_gflops

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_thresholds.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_thresholds", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def hand_test_split() -> ExitScores:
    """10 samples, exits at 1 / 2 / 4 GFLOPs: exit 1 alone is 50% right, the last exit 80%."""
    correct = np.zeros((3, 10), dtype=bool)
    correct[0, :5] = correct[1, :7] = correct[2, :8] = True
    return ExitScores(np.full((3, 10), 0.5), correct, np.array([1.0, 2.0, 4.0]))


def test_matched_cost_hand_example():
    test = hand_test_split()
    curve = CurvePoints(np.array([3.0, 2.0]), np.array([0.8, 0.7]))  # line (1, .5) (2, .7) (3, .8), then flat
    reference = CurvePoints(np.array([1.5, 2.5, 3.5]), np.array([0.6, 0.7, 0.8]))
    np.testing.assert_allclose(accuracy_at(curve, test, [1.5, 2.5, 3.5, 9.0]), [0.6, 0.75, 0.8, 0.8])
    comp = compare_matched_cost(curve, reference, test)
    assert comp.mean_gap == pytest.approx(0.05 / 3) and comp.worst_gap == pytest.approx(0.0, abs=1e-15)
    assert comp.fraction_at_or_above == 1.0 and comp.num_reference_points == 3
    assert comp.match_gflops == 3.0 and comp.reference_match_gflops == pytest.approx(3.5)
    below = CurvePoints(np.array([2.5]), np.array([0.65]))  # reaches 0.65 at 2.5, never the last exit's 0.8
    comp = compare_matched_cost(below, reference, test)
    np.testing.assert_allclose([comp.mean_gap, comp.worst_gap, comp.fraction_at_or_above], [-0.25 / 3, -0.15, 0.0])
    assert comp.match_gflops is None and matching_gflops(below, test, target=0.6) == pytest.approx(2.0)


def test_bench_on_a_small_synthetic_source(bench, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["--synthetic", "quick", "--solvers", "geometric,exact,anchored", "--no-progress", "--out", str(out)]
    assert bench.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    (source,) = report["sources"]
    assert (source["num_calibration"], source["num_test"], source["num_exits"]) == (400, 400, 3)
    anchored, exact = source["solvers"]["anchored"], source["solvers"]["exact"]
    assert (anchored["fraction_at_or_above"], anchored["worst_gap"], anchored["mean_gap"]) == (1.0, 0.0, 0.0)
    assert all(anchored["targets"].values()) and anchored["match_gflops"] == anchored["reference_match_gflops"]
    assert exact["fraction_at_or_above"] < 0.7 and exact["worst_gap"] < -0.01 and not exact["targets"]["worst"]
    assert len(anchored["curve"]["test_accuracy"]) == anchored["num_budgets"] == 60  # 59 + the last exit's cost
    assert report["best"] == report["default_solver"] == "anchored"
    (group,) = report["groups"]
    assert group["group"] == "synthetic 400/400 c10" and group["solvers"]["anchored"]["all_targets"]
    assert [r["solver"] for r in report["ranking"]][-1] == "exact"
    md = (out / "report.md").read_text()
    assert "| `anchored` | 1/1 | +0.00 | +0.00 | 100.0% | 1/1 |" in md
    assert md in capsys.readouterr().out
    # a second run never overwrites the report silently
    assert bench.main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert bench.main(args[:3] + ["geometric", "--no-progress", "--out", str(out), "--force", "--memory"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["sources"][0]["solvers"]) == ["geometric"]
    (memory,) = report["memory"]["solvers"]
    assert memory["num_samples"] == [200, 400] and min(memory["peak_mib"]) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging folder left behind


def test_bench_sources_and_bad_input(bench, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for split, seed in (("calib", 1), ("train", 2), ("test", 3)):
        o = synthetic_exit_outputs(60, num_classes=4, seed=seed)
        save_exit_outputs(run / f"{split}_outputs.npz", o.logits, o.labels, o.gflops)
    names = [s.name for s in bench.file_sources(str(run), 0)]
    assert names == ["run (calib-calibrated)", "run (train-calibrated)"]
    (single,) = bench.file_sources(str(run / "train_outputs.npz"), 0)
    assert single.calib.num_samples == 60 and single.test.num_samples == 60
    (halves,) = bench.file_sources(str(run / "test_outputs.npz"), 0)
    assert halves.calib.num_samples + halves.test.num_samples == 60
    for argv, match in ((["--solvers", "geometric,bogus"], "unknown solver"),
                        (["--solvers", "anchored:z"], "not key=value"),
                        ([str(tmp_path / "missing")], "no such run folder"),
                        (["--synthetic", "none"], "no sources")):
        assert bench.main(argv + ["--out", str(tmp_path / "r"), "--no-progress"]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    (run / "summary.json").write_text("{}")  # a run's folder: never, not even with --force
    assert bench.main(["--synthetic", "quick", "--solvers", "geometric", "--out", str(run), "--force"]) == 2
    assert "never replaces" in capsys.readouterr().err


def test_bench_default_folder_is_new(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert bench.main(["--synthetic", "quick", "--solvers", "geometric", "--no-progress"]) == 0
    folders = sorted((tmp_path / "outputs" / "bench_thresholds").iterdir())
    assert len(folders) == 2 and all(sorted(p.name for p in f.iterdir()) == ["report.json", "report.md"]
                                     for f in folders)
