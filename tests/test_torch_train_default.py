"""The true default run (`python torch_impl/train.py`, only --output given) and evaluate.py on what it leaves.

The default run is the slow test of this suite (about two minutes on 2 CPU cores); every other
training test uses tiny settings.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.training.recipes import with_token_dropout
from exit_order import assert_last_exit_not_worse
from common.training import SUMMARY_KEYS, load_summary, run_files
from torch_impl import create_model, save_checkpoint
from torch_impl import evaluate

ROOT = Path(__file__).resolve().parents[1]
CHANCE = 0.1  # ten digits


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "torch_impl" / "train.py"), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500, env=dict(os.environ))
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"default run: {seconds:.0f} s")
    return out, proc.stdout


def test_default_run_writes_everything_and_orders_the_exits(default_run):
    out, stdout = default_run
    files = run_files("torch")
    for name in ("checkpoint", "train_state", "summary", "config", "args", "log", "calib_outputs", "test_outputs",
                 "thresholds"):
        assert (out / files[name]).is_file(), name
    for png in files["plots"]:
        assert (out / png).is_file(), png
    s = load_summary(out / "summary.json")
    assert tuple(s) == SUMMARY_KEYS
    assert (s["model"], s["mode"], s["framework"], s["dataset"]["name"]) == ("dvt_tiny_digits", "train", "torch",
                                                                             "digits")
    assert s["dataset"]["sizes"] == {"train": 1078, "calib": 360, "test": 359}
    for split in ("calib", "test"):
        top1 = s["top1"][split]
        assert min(top1) > 5 * CHANCE, (split, top1)  # clearly better than chance at every exit
        # The last exit is not significantly worse than any earlier one on the same images (exit_order.py:
        # which of two exits one to four images apart comes first depends on the machine's rounding).
        assert_last_exit_not_worse(out / files[f"{split}_outputs"])
    assert s["gflops"] == sorted(s["gflops"])
    assert set(s["curve"]["solvers"]) == {"anchored", "exact", "genetic", "geometric"}
    assert s["thresholds"]["default_solver"] == "anchored" and s["thresholds"]["solved_on"] == "calib"
    exact = s["curve"]["solvers"]["exact"]
    assert max(exact["accuracy"]) >= s["top1"]["test"][0]
    epochs = s["weights"]["epochs"]
    assert len((out / "log.csv").read_text().splitlines()) == epochs + 1
    assert stdout.count("calib top-1 %") == epochs
    cfg = json.loads((out / "config.json").read_text())
    model = create_model("dvt_tiny_digits", checkpoint_path=out / "checkpoint.pth")
    # The checkpoint's model with the run's one override: the digits recipe's --token-drop 0 (recipes.py)
    trained = dataclasses.replace(model.config, exits=with_token_dropout(model.config, 0.0))
    assert cfg == json.loads(json.dumps(trained.to_dict()))  # JSON has lists, not tuples


def test_evaluate_reproduces_the_training_summary(default_run, tmp_path):
    out, _ = default_run
    ev = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.pth"), "--output", str(ev), "--workers", "0"]) == 0
    trained, evaluated = load_summary(out / "summary.json"), load_summary(ev / "summary.json")
    assert tuple(evaluated) == tuple(trained)
    assert evaluated["mode"] == "evaluate" and evaluated["weights"]["epochs_completed"] == trained["weights"]["epochs"]
    assert evaluated["top1"] == trained["top1"] and evaluated["gflops"] == trained["gflops"]
    assert evaluated["thresholds"] == trained["thresholds"] and evaluated["curve"] == trained["curve"]


def test_evaluate_infers_the_model_and_rejects_a_mismatch(default_run, tmp_path, capsys):
    out, _ = default_run
    bare = tmp_path / "bare.pth"  # weights without a stored config: the model is found from the shapes
    import torch
    torch.save({"model": torch.load(out / "checkpoint.pth", weights_only=True)["state_dict"]}, bare)
    assert evaluate.main(["--checkpoint", str(bare), "--output", str(tmp_path / "e1"), "--workers", "0",
                          "--solvers", "geometric"]) == 0
    assert load_summary(tmp_path / "e1" / "summary.json")["model"] == "dvt_tiny_digits"
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.pth"), "--model", "dvt_tiny_deit",
                          "--output", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint does not fit model 'dvt_tiny_deit'" in err and "missing key(s)" in err
    other = save_checkpoint(create_model("dvt_tiny_deit", num_classes=5), tmp_path / "five.pth")
    assert evaluate.main(["--checkpoint", str(other), "--output", str(tmp_path / "e3")]) == 2
    assert "5-class heads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(tmp_path / "none.pth"), "--output", str(tmp_path / "e4")])
    assert "no such file" in capsys.readouterr().err
