"""tools/solve_thresholds.py end to end on small synthetic outputs."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from common.thresholds import (ExitScores, ThresholdCurve, calibration_test_split, evaluate_thresholds,
                               load_exit_outputs, save_exit_outputs, synthetic_exit_outputs)

TOOL = Path(__file__).resolve().parents[1] / "tools" / "solve_thresholds.py"
FAST_GA = ["--ga-generations", "15", "--ga-population", "16"]


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("solve_thresholds", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    paths = {}
    for name, seed in (("val", 1), ("test", 2)):
        o = synthetic_exit_outputs(600, num_classes=5, seed=seed)
        paths[name] = save_exit_outputs(d / f"{name}.npz", o.logits, o.labels, o.gflops, model="synthetic",
                                        split=name)
    return paths


def test_all_solvers_on_one_split_file(cli, npz, tmp_path, capsys):
    out = tmp_path / "res"
    assert cli.main([str(npz["val"]), "--out", str(out), "--seed", "3", *FAST_GA]) == 0
    printed = capsys.readouterr().out
    assert "geometric" in printed and "exact" in printed and "single exits" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(cli.FILES)
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "thresholds.json").read_text())
    assert result["calibration"]["num_samples"] + result["test"]["num_samples"] == 600
    assert set(result["solvers"]) == {"anchored", "geometric", "genetic", "exact"}
    assert result["default_solver"] == "anchored"
    curves = {n: ThresholdCurve.from_dict(r["curve"]) for n, r in result["solvers"].items()}
    loaded = ThresholdCurve.load(out)  # a run's thresholds load as its default solver's curve
    assert loaded.solver == "anchored" and np.array_equal(loaded.thresholds, curves["anchored"].thresholds)
    assert ThresholdCurve.load(out / "thresholds.json", solver="exact").solver == "exact"
    assert curves["geometric"].num_points == 59
    assert len(result["table"]) == len(result["budgets"]) == curves["exact"].num_points
    # exact >= the others on calibration at every budget row
    for row in result["table"]:
        assert row["exact"]["calibration_accuracy"] >= row["geometric"]["calibration_accuracy"]
        assert row["exact"]["calibration_accuracy"] >= row["genetic"]["calibration_accuracy"]
    # the reported test numbers are the exit rule applied to the re-created test split
    outputs = load_exit_outputs(npz["val"])
    _, test_idx = calibration_test_split(600, outputs.labels, 0.5, 3)
    test = ExitScores.from_outputs(outputs, indices=test_idx)
    j = 10
    ev = evaluate_thresholds(test, curves["exact"].thresholds[j])
    assert result["solvers"]["exact"]["test"]["accuracy"][j] == ev.accuracy


def test_separate_test_file_and_other_criteria(cli, npz, tmp_path):
    for criterion in ("entropy", "random"):
        out = tmp_path / criterion
        code = cli.main([str(npz["val"]), "--test", str(npz["test"]), "--out", str(out), "--criterion", criterion,
                         "--solvers", "geometric,exact", "--budgets", "grid:5"])
        assert code == 0
        result = json.loads((out / "thresholds.json").read_text())
        assert result["criterion"] == criterion and result["test"]["num_samples"] == 600
        assert len(result["budgets"]) == 5
        assert result["default_solver"] == "geometric"  # anchored not solved: the first listed
        assert result["solvers"]["exact"]["curve"]["criterion"] == criterion


def test_overwrites_an_existing_directory_completely(cli, npz, tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main([str(npz["val"]), "--out", str(out), "--solvers", "exact", "--budgets", "1.0,2.0"]) == 0
    assert {p.name for p in out.iterdir()} == set(cli.FILES) | {"keep.txt"}
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize("extra,match", [
    (["--budgets", "0.1,1.0"], "outside"),
    (["--budgets", "grid:x"], "grid:N"),
    (["--solvers", "exact,bogus"], "unknown"),
    (["--calib-fraction", "1.5"], "strictly between"),
])
def test_bad_arguments_fail_cleanly_without_output(cli, npz, tmp_path, capsys, extra, match):
    out = tmp_path / "res"
    assert cli.main([str(npz["val"]), "--out", str(out), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_bad_files_fail_cleanly(cli, npz, tmp_path, capsys):
    o = synthetic_exit_outputs(50, num_classes=5, seed=0)
    nan_path = tmp_path / "nan.npz"
    logits = o.logits.copy()
    logits[0, 3, 1] = np.nan
    np.savez(nan_path, logits=logits, labels=o.labels, gflops=o.gflops)
    other = save_exit_outputs(tmp_path / "other.npz", o.logits, o.labels, o.gflops * 2)
    for args, match in (([str(nan_path)], "NaN"),
                        ([str(tmp_path / "none.npz")], "no exit-outputs file"),
                        ([str(npz["val"]), "--test", str(other)], "GFLOPs differ"),
                        ([str(npz["val"]), "--test", str(npz["test"]), "--calib-fraction", "0.3"],
                         "cannot be combined")):
        out = tmp_path / "res"
        assert cli.main([*args, "--out", str(out)]) == 2
        assert match in capsys.readouterr().err
        assert not out.exists()
