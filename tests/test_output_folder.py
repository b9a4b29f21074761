"""The output-folder policy of every command (common/training/output_folder.py), on folders only: no training."""
import os
import re
import threading
from argparse import Namespace

import pytest

from common.training.output_folder import (RunFolderError, claim_eval_output, claim_output, claim_thresholds_output,
                                           claim_train_output, new_run_folder, training_files)


def _train_args(**kw):
    base = dict(output=None, resume="", force=False, model="dvt_tiny_digits")
    base.update(kw)
    return Namespace(**base)


def test_default_folders_are_new_timm_style_and_collision_safe(tmp_path, capsys):
    made = []

    def make():
        made.append(new_run_folder("train", "dvt_tiny_digits", tmp_path))
    threads = [threading.Thread(target=make) for _ in range(8)]  # eight runs starting in the same second
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in made)
    assert len(set(names)) == 8 and all(p.parent == tmp_path / "train" and p.is_dir() for p in made)
    assert all(re.fullmatch(r"\d{8}-\d{6}-dvt_tiny_digits(-\d+)?", n) for n in names), names
    with claim_output(None, kind="eval", name="a/b c", files=[], command="x", root=tmp_path) as out:
        assert out.parent == tmp_path / "eval" and out.name.endswith("-a_b_c")
        (out / "summary.json").write_text("{}")
    assert f"output: {out}" in capsys.readouterr().out
    with claim_output(None, kind="eval", name="empty", files=[], command="x", root=tmp_path) as unused:
        pass
    assert not unused.exists()  # a folder made for a command that wrote nothing is removed again


def test_a_folder_with_a_run_is_refused_unless_resumed_or_forced(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pth", "last_state.pth", "log.csv", "notes.txt"):
        (run / name).write_text(name)
    with pytest.raises(RunFolderError, match=r"already holds the files of a run \(checkpoint.pth, last_state.pth, "
                                             r"log.csv\).*--resume auto.*--force"):
        with claim_train_output(_train_args(output=str(run)), "torch"):
            pass
    with claim_train_output(_train_args(output=str(run), resume="auto"), "torch") as out:
        assert sorted(os.listdir(out)) == ["checkpoint.pth", "last_state.pth", "log.csv", "notes.txt"]
    with claim_train_output(_train_args(output=str(run), resume=str(run / "last_state.pth")), "torch"):
        pass
    with pytest.raises(RunFolderError, match="no last_state.ckpt to resume"):  # the other framework's run
        with claim_train_output(_train_args(output=str(run), resume="auto"), "mindspore"):
            pass
    with claim_train_output(_train_args(output=str(run), force=True), "torch"):
        assert os.listdir(run) == ["notes.txt"]  # only the run's own files went
    assert "deleted the previous run's checkpoint.pth, last_state.pth, log.csv" in capsys.readouterr().err
    with pytest.raises(RunFolderError, match="--resume auto continues the run in --output"):
        claim_train_output(_train_args(resume="auto"), "torch")


def test_evaluation_and_thresholds_never_touch_a_training_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("epoch\n")
    (run / "summary.json").write_text("{}")
    before = {p.name: p.read_text() for p in run.iterdir()}
    for force in (False, True):
        with pytest.raises(RunFolderError, match="is a training run's folder .*not even with --force"):
            with claim_eval_output(Namespace(output=str(run), force=force, model=None, checkpoint="c.pth"), "torch"):
                pass
        with pytest.raises(RunFolderError, match="--out .* is a training run's folder"):
            with claim_thresholds_output(Namespace(out=str(run), force=force, outputs="x.npz")):
                pass
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "summary.json").write_text("{}")
    with pytest.raises(RunFolderError, match="is another run's folder"):  # an evaluation's thresholds belong to it
        with claim_thresholds_output(Namespace(out=str(ev), force=True, outputs="x.npz")):
            pass
    with pytest.raises(RunFolderError, match="already holds the files of a run"):
        with claim_eval_output(Namespace(output=str(ev), force=False, model=None, checkpoint="c.pth"), "mindspore"):
            pass
    with claim_eval_output(Namespace(output=str(ev), force=True, model=None, checkpoint="c.pth"), "mindspore"):
        assert not (ev / "summary.json").exists()
    assert {p.name: p.read_text() for p in run.iterdir()} == before


def test_a_folder_is_locked_while_a_command_writes_into_it(tmp_path):
    with claim_output(tmp_path / "a", kind="train", name="m", files=training_files(), command="x"):
        with pytest.raises(RunFolderError, match="being written by another running command"):
            with claim_output(tmp_path / "a", kind="train", name="m", files=training_files(), command="x"):
                pass
    with claim_output(tmp_path / "a", kind="train", name="m", files=training_files(), command="x"):
        pass  # released
