"""The true default run (`python ms_impl/train.py`, only --output given), ms_impl/evaluate.py on what it
leaves, and the cross-framework check: the MindSpore checkpoint converted to torch scores the same.

The default run is the slow test of this suite (about 4 minutes on 2 busy CPU cores); every other
training test uses tiny settings. This file is a cross-check, so it also runs torch (as subprocesses).
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.training.recipes import with_token_dropout
from exit_order import assert_last_exit_not_worse
from common.training import SUMMARY_KEYS, load_summary, run_files
from ms_impl import create_model, evaluate
from ms_impl.checkpoint import named_parameters, save_state_dict

ROOT = Path(__file__).resolve().parents[1]
CHANCE = 0.1  # ten digits


@pytest.fixture(autouse=True)
def _keep_execution_mode():
    """evaluate.main switches the process to GRAPH mode; other test modules expect theirs back."""
    import mindspore as ms
    mode = ms.get_context("mode")
    yield
    ms.set_context(mode=mode)


def _run(args, timeout=600):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    start = time.perf_counter()
    proc = _run([ROOT / "ms_impl" / "train.py", "--output", out], timeout=1500)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"default run: {seconds:.0f} s")
    return out, proc.stdout


def test_default_run_writes_everything_and_orders_the_exits(default_run):
    out, stdout = default_run
    files = run_files("mindspore")
    for name in ("checkpoint", "train_state", "summary", "config", "args", "log", "calib_outputs", "test_outputs",
                 "thresholds"):
        assert (out / files[name]).is_file(), name
    for png in files["plots"]:
        assert (out / png).is_file(), png
    s = load_summary(out / "summary.json")
    assert tuple(s) == SUMMARY_KEYS
    assert (s["model"], s["mode"], s["framework"], s["dataset"]["name"]) == ("dvt_tiny_digits", "train", "mindspore",
                                                                             "digits")
    assert s["dataset"]["sizes"] == {"train": 1078, "calib": 360, "test": 359}
    print(f"per-exit top-1: calib {s['top1']['calib']}, test {s['top1']['test']}")
    for split in ("calib", "test"):
        top1 = s["top1"][split]
        assert min(top1) > 5 * CHANCE, (split, top1)  # clearly better than chance at every exit
        # The last exit is not significantly worse than any earlier one on the same images (exit_order.py:
        # which of two exits one to four images apart comes first depends on the machine's rounding).
        assert_last_exit_not_worse(out / files[f"{split}_outputs"])
    assert s["gflops"] == sorted(s["gflops"])
    assert set(s["curve"]["solvers"]) == {"anchored", "exact", "genetic", "geometric"}
    assert s["thresholds"]["default_solver"] == "anchored" and s["thresholds"]["solved_on"] == "calib"
    assert max(s["curve"]["solvers"]["exact"]["accuracy"]) >= s["top1"]["test"][0]
    epochs = s["weights"]["epochs"]
    assert len((out / "log.csv").read_text().splitlines()) == epochs + 1
    assert stdout.count("calib top-1 %") == epochs and "on CPU (graph mode)" in stdout
    cfg = json.loads((out / "config.json").read_text())
    loaded = create_model("dvt_tiny_digits", checkpoint_path=out / "checkpoint.ckpt").config
    # The checkpoint's model with the run's one override: the digits recipe's --token-drop 0 (recipes.py)
    trained = dataclasses.replace(loaded, exits=with_token_dropout(loaded, 0.0))
    assert cfg == json.loads(json.dumps(trained.to_dict()))  # JSON has lists where the config has tuples


def test_learning_rates_are_timms(default_run):
    """log.csv's per-epoch lr against timm's create_scheduler_v2 with the digits recipe (torch, a subprocess)."""
    out, _ = default_run
    code = ("import json, torch; from timm.scheduler import create_scheduler_v2\n"
            "p = torch.nn.Parameter(torch.zeros(1)); o = torch.optim.AdamW([p], lr=2e-3)\n"
            "s, n = create_scheduler_v2(o, sched='cosine', num_epochs=30, warmup_epochs=2, warmup_lr=1e-5, "
            "min_lr=1e-5, updates_per_epoch=16)\n"
            "lrs = []\n"
            "for e in range(n):\n"
            "    lrs.append(o.param_groups[0]['lr']); s.step(e + 1)\n"
            "print(json.dumps(lrs))\n")
    proc = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    timm_lrs = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = (out / "log.csv").read_text().splitlines()
    column = rows[0].split(",").index("lr")
    ours = [float(r.split(",")[column]) for r in rows[1:]]
    assert len(ours) == len(timm_lrs) == 30
    assert np.allclose(ours, timm_lrs, rtol=1e-5, atol=0)  # log.csv keeps 6 significant digits


def test_evaluate_reproduces_the_training_summary(default_run, tmp_path):
    out, _ = default_run
    ev = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.ckpt"), "--output", str(ev), "--workers", "0",
                          "--cpu-threads", "0"]) == 0  # 0: leave the process's kernel pool alone
    trained, evaluated = load_summary(out / "summary.json"), load_summary(ev / "summary.json")
    assert tuple(evaluated) == tuple(trained)
    assert evaluated["mode"] == "evaluate" and evaluated["weights"]["epochs_completed"] == trained["weights"]["epochs"]
    assert evaluated["top1"] == trained["top1"] and evaluated["gflops"] == trained["gflops"]
    assert evaluated["thresholds"] == trained["thresholds"] and evaluated["curve"] == trained["curve"]


def test_checkpoint_converts_to_torch_and_scores_the_same(default_run, tmp_path):
    """tools/convert_weights.py (.ckpt -> .pth), then torch_impl/evaluate.py: the same per-exit accuracy on both
    splits, and per-exit logits within 1e-4 of MindSpore's."""
    out, _ = default_run
    pth = tmp_path / "digits.pth"
    conv = _run([ROOT / "tools" / "convert_weights.py", out / "checkpoint.ckpt", pth])
    assert conv.returncode == 0, conv.stdout[-2000:] + conv.stderr[-2000:]
    ev = tmp_path / "torch_eval"
    proc = _run([ROOT / "torch_impl" / "evaluate.py", "--checkpoint", pth, "--output", ev, "--workers", "0",
                 "--solvers", "geometric"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ms_summary, torch_summary = load_summary(out / "summary.json"), load_summary(ev / "summary.json")
    assert torch_summary["framework"] == "torch" and torch_summary["model"] == "dvt_tiny_digits"
    worst = 0.0
    for split in ("calib", "test"):
        name = run_files("torch")[f"{split}_outputs"]
        ms_out, torch_out = np.load(out / name), np.load(ev / name)
        assert np.array_equal(ms_out["labels"], torch_out["labels"])
        worst = max(worst, float(np.abs(ms_out["logits"] - torch_out["logits"]).max()))
        assert torch_summary["top1"][split] == ms_summary["top1"][split], split  # the same correct samples
    print(f"ms vs torch per-exit logits: max |diff| {worst:.2e}; top-1 {ms_summary['top1']}")
    assert worst <= 1e-4


def test_evaluate_infers_the_model_and_rejects_a_mismatch(default_run, tmp_path, capsys):
    out, _ = default_run
    model = create_model("dvt_tiny_digits", checkpoint_path=out / "checkpoint.ckpt")
    bare = save_state_dict(named_parameters(model, "mindspore"), tmp_path / "bare.ckpt", metadata={})
    # no stored config: the model is found from the shapes (op by op: PYNATIVE evaluation is covered here, and
    # it skips the second GRAPH compile of this file)
    assert evaluate.main(["--checkpoint", str(bare), "--output", str(tmp_path / "e1"), "--workers", "0",
                          "--solvers", "geometric", "--cpu-threads", "0", "--mode", "pynative"]) == 0
    inferred, trained = load_summary(tmp_path / "e1" / "summary.json"), load_summary(out / "summary.json")
    assert inferred["model"] == "dvt_tiny_digits"
    assert inferred["top1"] == trained["top1"]  # op by op, the same correct images as the GRAPH-mode run
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.ckpt"), "--model", "dvt_tiny_deit",
                          "--output", str(tmp_path / "e2"), "--cpu-threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint does not fit model 'dvt_tiny_deit'" in err and "missing key(s)" in err
    from ms_impl import save_checkpoint
    other = save_checkpoint(create_model("dvt_tiny_deit", num_classes=5), tmp_path / "five.ckpt")
    assert evaluate.main(["--checkpoint", str(other), "--output", str(tmp_path / "e3"), "--cpu-threads", "0"]) == 2
    assert "5-class heads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(tmp_path / "none.ckpt"), "--output", str(tmp_path / "e4")])
    assert "no such file" in capsys.readouterr().err
