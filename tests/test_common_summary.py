"""The run files both trainers share: finalize_run / summary.json layout, log.csv, args.yaml, resume lookup."""
import json

import numpy as np
import pytest

from common import cumulative_gflops, get_config
from common.thresholds import load_exit_outputs, synthetic_exit_outputs
from common.training import (SUMMARY_KEYS, CSVLog, finalize_run, load_summary, parse_train_args, resolve_resume,
                             run_files, validate_summary, write_run_config)
from common.training.finalize import checkpoint_extras
from common.training.run_files import args_to_dict


def _fake_logits(cfg, n, seed):
    o = synthetic_exit_outputs(n, num_classes=cfg.num_classes, num_exits=cfg.num_exits, seed=seed)
    return o.logits, o.labels


@pytest.fixture(scope="module")
def finalized(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = get_config("dvt_tiny_t2t")
    summary = finalize_run(out, cfg, calib=_fake_logits(cfg, 300, 1), test=_fake_logits(cfg, 250, 2),
                           framework="torch", mode="train",
                           dataset={"name": "digits", "source": "synthetic", "num_classes": 10,
                                    "sizes": {"train": 0, "calib": 300, "test": 250}},
                           weights={"checkpoint": "checkpoint.pth", "epochs_completed": 3, "epochs": 3},
                           solvers="exact,geometric", seed=0, train_seconds=1.5, verbose=False)
    return out, cfg, summary


def test_finalize_writes_every_file_and_a_valid_summary(finalized):
    out, cfg, summary = finalized
    files = run_files("torch")
    for key in ("summary", "calib_outputs", "test_outputs", "thresholds"):
        assert (out / files[key]).is_file(), key
    for png in files["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = load_summary(out / "summary.json")
    assert tuple(on_disk) == SUMMARY_KEYS
    json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert on_disk["gflops"] == pytest.approx(cumulative_gflops(cfg))
    assert on_disk["grids"] == list(cfg.grids) and on_disk["timing"]["train_seconds"] == 1.5
    assert set(on_disk["thresholds"]["solvers"]) == set(on_disk["curve"]["solvers"]) == {"exact", "geometric"}
    calib = load_exit_outputs(out / "calib_outputs.npz")
    acc = (calib.logits.argmax(-1) == calib.labels).mean(axis=1)
    assert on_disk["top1"]["calib"] == pytest.approx(acc.tolist())
    exact = on_disk["curve"]["solvers"]["exact"]
    assert len(exact["gflops"]) == len(exact["accuracy"]) == len(on_disk["thresholds"]["solvers"]["exact"]["budgets"])
    assert all(row[-1] == "-inf" for row in on_disk["thresholds"]["solvers"]["exact"]["thresholds"])
    h = on_disk["highlights"]["exact"]
    assert h["matches_last_exit_gflops"] is None or h["matches_last_exit_gflops"] <= on_disk["gflops"][-1] + 1e-12


def test_checkpoint_extras_hold_full_curves(finalized):
    from common.thresholds import ThresholdCurve
    out, _, summary = finalized
    extras = checkpoint_extras(out, summary)
    curve = ThresholdCurve.from_dict(extras["thresholds"]["exact"])
    assert curve.num_exits == 3 and extras["top1"] == summary["top1"]


def test_single_exit_models_have_no_thresholds(tmp_path):
    cfg = get_config("t2t_vit_tiny")
    logits = np.random.default_rng(0).normal(size=(1, 40, 10)).astype(np.float32)
    labels = np.arange(40) % 10
    s = finalize_run(tmp_path, cfg, calib=(logits, labels), test=(logits, labels), framework="mindspore",
                     mode="evaluate", dataset={"name": "digits"}, weights={}, verbose=False)
    assert s["thresholds"] is None and s["curve"] is None and s["files"]["plots"] == []
    assert tuple(s) == SUMMARY_KEYS and not (tmp_path / "thresholds.json").exists()


def test_validate_summary_rejects_broken_layouts(finalized):
    _, _, summary = finalized
    bad = dict(summary)
    del bad["curve"]
    with pytest.raises(ValueError, match="missing keys"):
        validate_summary(bad)
    bad = dict(summary, top1={"calib": [0.5, 0.5], "test": [0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match="2 entries for 3 exits"):
        validate_summary(bad)


def test_csv_log_rewrites_and_keeps_epochs_on_resume(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLog(path)
    for e in (1, 2, 3):
        log.append({"epoch": e, "train_loss": 1.0 / e, "val_top1_exit1": 0.5})
    assert path.read_text().splitlines()[0] == "epoch,train_loss,val_top1_exit1"
    resumed = CSVLog(path, keep_epochs=2)
    resumed.append({"epoch": 3, "train_loss": 0.25, "val_top1_exit1": 0.6, "extra": 1})
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3,0.25,0.6,1")
    assert len(CSVLog(path).rows) == 0  # a fresh run starts a fresh log


def test_args_yaml_replays_with_config(tmp_path):
    args = parse_train_args(["--epochs", "7", "--exit-weights", "1,2,3", "--resume", "auto", "--output", "x"])
    write_run_config(tmp_path, get_config(args.model), args, "torch")
    assert "resume" not in args_to_dict(args) and "framework" not in args_to_dict(args)
    again = parse_train_args(["--config", str(tmp_path / "args.yaml")])
    assert again.epochs == 7 and again.exit_weights == (1, 2, 3) and again.output == "x" and again.resume == ""
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["name"] == "dvt_tiny_digits"


def test_resolve_resume(tmp_path):
    assert resolve_resume("", tmp_path, "torch") == ""
    assert resolve_resume("auto", tmp_path, "torch") == ""
    (tmp_path / "last_state.pth").write_bytes(b"x")
    assert resolve_resume("auto", tmp_path, "torch") == str(tmp_path / "last_state.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_resume(str(tmp_path / "nope.pth"), tmp_path, "torch")
    assert run_files("mindspore")["checkpoint"] == "checkpoint.ckpt"
