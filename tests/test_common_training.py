"""The training contract both frameworks share: recipes, flag precedence, YAML, splits."""
import numpy as np
import pytest

from common.training import parse_train_args, recipe_for, resolve_splits
from common.training.splits import SPLIT_SEED, digits_splits


def test_no_arguments_means_the_digits_demo():
    args = parse_train_args([])
    assert (args.model, args.dataset, args.framework) == ("dvt_tiny_digits", "digits", "torch")
    assert args.epochs == recipe_for("dvt_tiny_digits")["epochs"] and args.hflip == 0.0
    assert args.eval_batch_size == 2 * args.batch_size


def test_reference_models_get_the_reference_recipe():
    args = parse_train_args(["--model", "dvt_t2t_vit_12", "--data-dir", "/data/imagenet"])
    assert (args.dataset, args.lr, args.weight_decay, args.batch_size) == ("imagefolder", 2e-3, 0.03, 128)
    assert args.aa == "rand-m9-mstd0.5-inc1" and args.mixup == 0.8 and args.model_ema and args.amp
    assert args.drop_path == 0.1
    args = parse_train_args(["--model", "dvt_t2t_vit_14", "--data-dir", "x"])
    assert (args.lr, args.weight_decay, args.batch_size) == (5e-4, 0.05, 64)


def test_precedence_recipe_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: dvt_tiny_deit\nepochs: 3\nlr: 0.01\nexit-weights: [1, 2, 3]\n")
    args = parse_train_args(["--config", str(cfg), "--lr", "0.02"])
    assert args.model == "dvt_tiny_deit" and args.epochs == 3 and args.lr == 0.02
    assert args.exit_weights == (1, 2, 3)
    assert args.weight_decay == recipe_for("dvt_tiny_deit")["weight_decay"]


def test_bad_arguments_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--config", str(bad)])
    assert exit_info.value.code == 2 and "unknown key 'epoch'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_train_args(["--model", "dvt_tiny_t2t", "--exit-weights", "1,1"])
    assert "--exit-weights needs 3 values" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_train_args(["--dataset", "cifar10"])
    assert "needs --data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_train_args(["--model", "dvt_tiny_t2", "--epochs", "1"])
    assert "did you mean" in capsys.readouterr().err


def test_mindspore_schema_has_device_and_mode():
    args = parse_train_args(["--device", "Ascend", "--mode", "graph"], framework="mindspore")
    assert (args.device, args.mode, args.framework) == ("Ascend", "graph", "mindspore")


def test_digits_splits_are_fixed_disjoint_and_stratified():
    s = digits_splits(32)
    assert s.sizes() == {"train": 1078, "calib": 360, "test": 359}
    assert s.train.images.shape[1:] == (32, 32, 3) and s.train.images.dtype == np.uint8
    for split in (s.train, s.calib, s.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.9 * counts.mean()
    again = resolve_splits("digits", img_size=32)
    assert np.array_equal(again.test.images, s.test.images) and SPLIT_SEED == 0
    assert sum(s.sizes().values()) == 1797


def test_missing_imagefolder_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs train/ and val/ sub-folders"):
        resolve_splits("imagefolder", str(tmp_path))
