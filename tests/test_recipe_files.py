"""The MindCV-style recipe files (common/training/configs): one per reference model and device, read by both
trainers' --config, in agreement with the recipes in code and listed in README."""
from pathlib import Path

import pytest
import yaml

from common import REFERENCE_MODELS
from common.training import parse_train_args, recipe_for

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "common" / "training" / "configs"
DEVICES = {"gpu": ("O1", "dynamic"), "ascend": ("O2", 1024.0)}


def test_one_file_per_reference_model_and_device_and_readme_lists_them():
    files = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert files == sorted(f"{m}_{d}.yaml" for m in REFERENCE_MODELS for d in DEVICES)
    readme = (ROOT / "README.md").read_text()
    assert all(f"common/training/configs/{f}" in readme or f in readme for f in files)


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
@pytest.mark.parametrize("model", REFERENCE_MODELS)
@pytest.mark.parametrize("device", sorted(DEVICES))
def test_both_trainers_read_every_recipe_file(tmp_path, framework, model, device):
    path = CONFIGS / f"{model}_{device}.yaml"
    raw = yaml.safe_load(path.read_text())
    args = parse_train_args(["--config", str(path), "--data-dir", str(tmp_path), "--output", str(tmp_path / "o")],
                            framework=framework)
    level, scale = DEVICES[device]
    assert args.model == model and args.dataset == "imagefolder" and args.amp is True
    assert (args.amp_level, args.loss_scale) == (level, scale)
    recipe = recipe_for(model)
    for key in ("batch_size", "lr", "weight_decay", "epochs", "warmup_epochs", "min_lr", "mixup", "cutmix",
                "smoothing", "drop_path", "model_ema_decay", "aa", "reprob"):
        assert raw[key] == recipe[key] == getattr(args, key), key
    flags = parse_train_args(["--config", str(path), "--data-dir", str(tmp_path), "--output", str(tmp_path / "o"),
                              "--batch-size", "8", "--loss-scale", "dynamic"], framework=framework)
    assert flags.batch_size == 8 and flags.loss_scale == "dynamic"  # flags win over the file


def test_bad_loss_scale_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        parse_train_args(["--loss-scale", "-3", "--output", str(tmp_path / "o")])
    assert err.value.code == 2 and "--loss-scale takes 'dynamic' or a positive number" in capsys.readouterr().err
