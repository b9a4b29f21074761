"""Checkpoint formats, containers, namings and mismatch reports (tiny models; full size elsewhere)."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import common
from common.exits import per_exit
from common.naming import name_map
from torch_impl import CheckpointMismatchError, create_model, load_checkpoint, save_checkpoint
from torch_impl.checkpoint import named_state_dict, read_checkpoint


def seeded(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name).eval()


def images(cfg, batch=2):
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(5))


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return per_exit(model(x))


def assert_same_outputs(a, b):
    x = images(a.config)
    assert all(torch.equal(p, q) for p, q in zip(outputs(a, x), outputs(b, x)))


def reference_container(model, **extra):
    """What a released DVT file holds: reference names under `model_state_dict`, numpy extras."""
    return {"model_state_dict": named_state_dict(model, "reference"),
            "flops": [np.float64(0.47), np.float64(1.46), np.float64(3.50)],
            "anytime_classification": np.array([70.1, 75.2, 78.3]), "dynamic_threshold": [0.9, 0.8], **extra}


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit", "dvt_tiny_deit_2exit", "t2t_vit_tiny",
                                  "dvt_tiny_t2t_transformer"])
def test_reference_container_round_trip(tmp_path, name):
    src = seeded(name, seed=1)
    path = tmp_path / "released.pth"
    torch.save(reference_container(src), path)
    dst = create_model(name, checkpoint_path=path).eval()
    assert_same_outputs(src, dst)


def test_reference_names_are_the_reference_layout():
    sd = named_state_dict(seeded("dvt_tiny_t2t"), "reference")
    assert "less_less_token.tokens_to_token.attention1.w" in sd
    assert "normal_token.blocks.0.feature_resuse_mlp.1.fc2.weight" in sd
    assert "less_token.relation_reuse_conv.2.bias" in sd and not any(k.startswith("exits.") for k in sd)
    single = named_state_dict(seeded("t2t_vit_tiny"), "reference")  # original T2T-ViT layout: no prefix
    assert "tokens_to_token.project.weight" in single and "head.bias" in single


def test_load_info_reports_container_and_extras(tmp_path):
    src = seeded("dvt_tiny_t2t")
    path = tmp_path / "released.pth.tar"
    torch.save(reference_container(src), path)
    info = load_checkpoint(seeded("dvt_tiny_t2t", seed=9), path)
    assert info.container == "model_state_dict" and info.naming == "reference" and info.report.ok
    assert info.extras["dynamic_threshold"] == [0.9, 0.8] and len(info.extras["flops"]) == 3


def test_training_container_with_module_prefix_and_ema(tmp_path):
    live, ema = seeded("dvt_tiny_t2t", seed=1), seeded("dvt_tiny_t2t", seed=2)
    container = {"state_dict": {f"module.{k}": v for k, v in named_state_dict(live, "reference").items()},
                 "state_dict_ema": {f"module.{k}": v for k, v in named_state_dict(ema).items()},
                 "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(container, path)
    assert_same_outputs(live, create_model("dvt_tiny_t2t", checkpoint_path=path))
    assert_same_outputs(ema, create_model("dvt_tiny_t2t", checkpoint_path=path, use_ema=True))


@pytest.mark.parametrize("suffix,naming", [(".safetensors", "canonical"), (".safetensors", "reference"),
                                           (".safetensors", "mindspore"), (".pth", "canonical"),
                                           (".pt", "reference")])
def test_save_checkpoint_round_trip(tmp_path, suffix, naming):
    src = seeded("dvt_tiny_deit")
    path = save_checkpoint(src, tmp_path / "sub" / f"model{suffix}", naming=naming)
    assert sorted(os.listdir(path.parent)) == [path.name]  # atomic: no temp file left behind
    assert set(read_checkpoint(path).get("state_dict", read_checkpoint(path))) == set(
        name_map(src.config, naming).values())
    info = load_checkpoint(dst := seeded("dvt_tiny_deit", seed=7), path)
    assert info.naming == naming
    assert_same_outputs(src, dst)


def test_save_overwrites_atomically(tmp_path):
    a, b = seeded("dvt_tiny_t2t", seed=1), seeded("dvt_tiny_t2t", seed=2)
    path = save_checkpoint(a, tmp_path / "m.safetensors")
    save_checkpoint(b, path)
    assert_same_outputs(b, create_model("dvt_tiny_t2t", checkpoint_path=path))
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_bare_safetensors_reference_state_dict(tmp_path):
    src = seeded("dvt_tiny_t2t")
    save_file(named_state_dict(src, "reference"), str(tmp_path / "ref.safetensors"))
    assert_same_outputs(src, create_model("dvt_tiny_t2t", checkpoint_path=tmp_path / "ref.safetensors"))


def test_load_state_dict_accepts_reference_names_in_memory():
    src, dst = seeded("dvt_tiny_t2t", seed=1), seeded("dvt_tiny_t2t", seed=2)
    result = dst.load_state_dict(named_state_dict(src, "reference"))
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_outputs(src, dst)


def test_mismatch_lists_missing_unexpected_and_mis_shaped_and_loads_nothing(tmp_path):
    sd = named_state_dict(seeded("dvt_tiny_t2t", seed=1), "reference")
    del sd["normal_token.head.bias"]
    sd["normal_token.extra.weight"] = torch.zeros(3)
    sd["less_token.norm.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save({"model_state_dict": sd}, path)
    model = seeded("dvt_tiny_t2t", seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, path)
    message = str(err.value)
    assert "reference names" in message  # reported in the file's own naming
    assert "1 missing" in message and "normal_token.head.bias" in message
    assert "1 unexpected" in message and "normal_token.extra.weight" in message
    assert "1 mis-shaped" in message and "less_token.norm.weight: (64,) vs (7,)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never a partial load
    with pytest.raises(CheckpointMismatchError):
        model.load_state_dict(sd)


def test_non_strict_load_reports_and_loads_what_fits(tmp_path):
    src = seeded("dvt_tiny_t2t", seed=1)
    sd = named_state_dict(src)
    del sd["exits.0.head.weight"]
    sd["exits.0.norm.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "partial.pth")
    model = seeded("dvt_tiny_t2t", seed=2)
    info = load_checkpoint(model, tmp_path / "partial.pth", strict=False)
    assert info.report.missing == ["exits.0.head.weight"] and info.report.mis_shaped[0][0] == "exits.0.norm.bias"
    assert torch.equal(model.exits[1].head.weight, src.exits[1].head.weight)


def test_wrong_model_is_rejected(tmp_path):
    path = save_checkpoint(seeded("dvt_tiny_deit"), tmp_path / "deit.safetensors")
    with pytest.raises(CheckpointMismatchError, match="does not fit"):
        create_model("dvt_tiny_t2t", checkpoint_path=path)


def test_unknown_format_missing_file_and_unsafe_pickle(tmp_path):
    model = seeded("t2t_vit_tiny")
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        save_checkpoint(model, tmp_path / "m.ckpt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, tmp_path / "absent.pth")
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": named_state_dict(model), "obj": common.SoftSplit(1, 1)}, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        load_checkpoint(model, path)
    assert load_checkpoint(model, path, weights_only=False).report.ok


def test_numpy_arrays_as_weights():
    src = seeded("t2t_vit_tiny")
    arrays = {k: v.numpy() for k, v in named_state_dict(src, "reference").items()}
    dst = seeded("t2t_vit_tiny", seed=4)
    dst.load_state_dict(arrays)
    assert_same_outputs(src, dst)
