"""torch_impl/train.py on tiny runs, in-process: resume equivalence, NaN stop, transfer, data sets, clear errors."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from common.training import load_summary
from torch_impl import create_model, save_checkpoint
from torch_impl import engine
from torch_impl import train
from torch_impl.checkpoint import CheckpointMismatchError, read_checkpoint
from torch_impl.train_state import load_train_state
from torch_impl.transfer import load_for_transfer

FAST = ["--model", "dvt_tiny_deit", "--batch-size", "16", "--max-steps-per-epoch", "2", "--solvers", "geometric",
        "--workers", "0", "--eval-batch-size", "256", "--warmup-epochs", "1"]
# Every source of randomness of the reference recipe: RandAugment, random erasing, mixup/cutmix, drop path, EMA.
RECIPE = ["--model-ema", "--model-ema-decay", "0.9", "--mixup", "0.2", "--cutmix", "0.3", "--aa",
          "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--drop-path", "0.1", "--hflip", "0.5"]


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log_rows(path):
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    keep = [i for i, name in enumerate(head) if name not in ("img_per_s", "epoch_seconds")]
    return [[line.split(",")[i] for i in keep] for line in lines]


def test_resume_after_a_mid_epoch_kill_is_bitwise_identical(tmp_path, monkeypatch):
    args = FAST + RECIPE + ["--epochs", "3"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert train.main(args + ["--output", str(straight)]) == 0

    calls = {"n": 0}
    real = engine.multi_exit_loss

    def killed_in_epoch_3(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 3, step 2: one update of epoch 3 already applied in memory
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **kw)

    monkeypatch.setattr(engine, "multi_exit_loss", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.main(args + ["--output", str(part)])
    monkeypatch.undo()
    assert load_train_state(part / "last_state.pth")["epoch"] == 2
    assert read_checkpoint(part / "checkpoint.pth")["epoch"] == 2
    assert not (part / "summary.json").exists()

    assert train.main(args + ["--output", str(part), "--resume", "auto"]) == 0
    a, b = load_train_state(straight / "last_state.pth"), load_train_state(part / "last_state.pth")
    assert a["epoch"] == b["epoch"] == 3 and a["num_updates"] == b["num_updates"] == 6
    assert _same_tensors(a["model"], b["model"])
    assert _same_tensors(a["ema"], b["ema"])
    assert _same_tensors(read_checkpoint(straight / "checkpoint.pth")["state_dict"],
                         read_checkpoint(part / "checkpoint.pth")["state_dict"])
    sa, sb = load_summary(straight / "summary.json"), load_summary(part / "summary.json")
    assert sa["top1"] == sb["top1"] and sa["curve"] == sb["curve"] and sb["weights"]["ema"]
    assert _log_rows(straight / "log.csv") == _log_rows(part / "log.csv")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = engine.multi_exit_loss

    def nan_in_epoch_2(outputs, target, criterion, weights=None):
        calls["n"] += 1
        total, losses = real(outputs, target, criterion, weights)
        return (total * float("nan") if calls["n"] == 4 else total), losses

    monkeypatch.setattr(engine, "multi_exit_loss", nan_in_epoch_2)
    out = tmp_path / "run"
    assert train.main(FAST + ["--epochs", "3", "--output", str(out)]) == 3
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 2/2" in err and "last good checkpoint is kept" in err
    state = load_train_state(out / "last_state.pth")
    ckpt = read_checkpoint(out / "checkpoint.pth")
    assert state["epoch"] == ckpt["epoch"] == 1
    assert _same_tensors(state["model"], ckpt["state_dict"])
    assert not (out / "summary.json").exists()
    model = create_model("dvt_tiny_deit", checkpoint_path=out / "checkpoint.pth")
    assert model.num_exits == 3


def test_transfer_reinitialises_only_the_heads(tmp_path):
    source = create_model("dvt_tiny_deit")
    path = save_checkpoint(source, tmp_path / "ten.pth")
    target = create_model("dvt_tiny_deit", num_classes=2)
    heads = load_for_transfer(target, path)
    assert heads == ["exits.0.head", "exits.1.head", "exits.2.head"]
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in dst if ".head." not in k)
    with pytest.raises(CheckpointMismatchError, match="only the classifier heads may differ"):
        load_for_transfer(create_model("dvt_tiny_t2t", num_classes=2), path)


def _image_folder(root, classes=("a", "b"), per_class=12, corrupt=None):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(40, 36, 3), dtype=np.uint8) + 150 * c
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    if corrupt:  # a readable header (the data check passes it), a truncated body: only decoding finds it
        whole = (root / "train" / classes[0] / "0.png").read_bytes()
        (root / "train" / classes[0] / corrupt).write_bytes(whole[:len(whole) // 2])
    return root


def test_imagefolder_with_transfer_from_a_ten_class_checkpoint(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    init = save_checkpoint(create_model("dvt_tiny_deit"), tmp_path / "init.pth")
    out = tmp_path / "run"
    code = train.main(FAST + ["--dataset", "imagefolder", "--data-dir", str(data), "--calib-size", "6",
                              "--batch-size", "4", "--epochs", "1", "--initial-checkpoint", str(init),
                              "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "re-initialised heads: exits.0.head, exits.1.head, exits.2.head" in capsys.readouterr().out
    s = load_summary(out / "summary.json")
    assert s["num_classes"] == 2 and s["dataset"]["sizes"] == {"train": 18, "calib": 6, "test": 8}


def test_truncated_image_names_the_file(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", corrupt="broken.png")
    code = train.main(FAST + ["--dataset", "imagefolder", "--data-dir", str(data), "--calib-size", "6",
                              "--batch-size", "1", "--max-steps-per-epoch", "100", "--epochs", "1",
                              "--output", str(tmp_path / "run")])  # batch 1: no image is dropped
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot read image" in err and str(data / "train" / "a" / "broken.png") in err


def _fake_cifar10(root, n_train=40, n_test=20):
    rng = np.random.default_rng(1)
    root.mkdir()
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in batches:
        n = n_test if name == "test_batch" else n_train // 5
        labels = list(rng.integers(0, 10, size=n))
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    return root


def test_cifar_pickle_folder(tmp_path):
    data = _fake_cifar10(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "run"
    assert train.main(FAST + ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--calib-size", "10",
                              "--batch-size", "8", "--epochs", "1", "--output", str(out)]) == 0
    assert load_summary(out / "summary.json")["dataset"]["sizes"] == {"train": 30, "calib": 10, "test": 20}
    assert data.is_dir()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cifar10", "--data-dir", "{tmp}/nowhere"], "no CIFAR-10 python folder at"),
    (["--dataset", "imagefolder", "--data-dir", "{tmp}"], "needs train/ and val/ sub-folders"),
    (["--resume", "{tmp}/missing.pth"], "no such file"),
    (["--initial-checkpoint", "{tmp}/missing.pth"], "no checkpoint at"),
])
def test_bad_paths_fail_with_a_clear_message(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert train.main(FAST + ["--epochs", "1", "--output", str(tmp_path / "run")] + argv) == 2
    assert message in capsys.readouterr().err


def test_resume_from_a_weights_file_is_refused(tmp_path, capsys):
    weights = save_checkpoint(create_model("dvt_tiny_deit"), tmp_path / "w.pth")
    assert train.main(FAST + ["--epochs", "1", "--resume", str(weights), "--output", str(tmp_path / "r")]) == 2
    assert "not a training state" in capsys.readouterr().err
