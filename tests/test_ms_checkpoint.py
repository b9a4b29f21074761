"""MindSpore checkpoints: exact round trips, every accepted naming, and all-or-nothing validation."""
import os

import mindspore as ms
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from common import get_config, name_map
from common.checkpoints import CheckpointMismatchError
from common.naming import rename
from ms_impl import create_model, load_checkpoint, save_checkpoint

NAME = "dvt_tiny_deit_2exit"  # smallest cascade with both reuses: fast forwards


@pytest.fixture(autouse=True)
def _pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="module")
def trained():
    """A model and its logits on a fixed batch (weights from seed 1, unlike the fresh models below)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(1)
    net = create_model(NAME)
    cfg = net.config
    x = ms.Tensor(np.random.RandomState(0).randn(2, cfg.in_chans, cfg.img_size, cfg.img_size).astype(np.float32))
    return net, x, [o.asnumpy() for o in net(x)]


def fresh():
    ms.set_seed(2)
    return create_model(NAME)


def weights(net):
    return {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}


def assert_same_logits(net, x, ref):
    for a, b in zip(net(x), ref):
        np.testing.assert_array_equal(a.asnumpy(), b)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip_is_exact(tmp_path, trained, suffix):
    net, x, ref = trained
    path = save_checkpoint(net, tmp_path / f"model{suffix}")
    assert sorted(os.listdir(tmp_path)) == [f"model{suffix}"]  # no temp file left behind
    other = fresh()
    assert any(not np.array_equal(a, b) for a, b in zip(weights(other).values(), weights(net).values()))
    info = load_checkpoint(other, path)
    assert info.naming == ("mindspore" if suffix == ".ckpt" else "canonical") and info.report.ok
    if suffix == ".ckpt":  # the config travels as a string entry, set aside as an extra
        assert '"name": "dvt_tiny_deit_2exit"' in info.extras["config"]
    assert_same_logits(other, x, ref)
    for n, p in other.parameters_and_names():  # frozen stays frozen after loading
        assert p.requires_grad == dict(net.parameters_and_names())[n].requires_grad
    assert_same_logits(create_model(NAME, checkpoint_path=path), x, ref)


def test_safetensors_holds_canonical_names_and_the_config(tmp_path, trained):
    net, _, _ = trained
    path = save_checkpoint(net, tmp_path / "m.safetensors")
    assert set(load_file(path)) == set(name_map(net.config, "canonical"))
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert meta["naming"] == "canonical" and '"name": "dvt_tiny_deit_2exit"' in meta["config"]


@pytest.mark.parametrize("naming", ["canonical", "mindspore", "reference"])
def test_safetensors_in_any_naming_and_fp16_load(tmp_path, trained, naming):
    net, x, ref = trained
    cfg = net.config
    tensors = rename(weights(net), cfg, "mindspore", naming)
    path = tmp_path / "any.safetensors"
    save_file(tensors, str(path))
    other = fresh()
    assert load_checkpoint(other, path).naming == naming
    assert_same_logits(other, x, ref)
    half = {k: v.astype(np.float16) for k, v in tensors.items()}  # cast to the model's dtype on load
    save_file(half, str(path))
    load_checkpoint(other, path)
    assert all(p.dtype == ms.float32 for p in other.get_parameters())


def test_ckpt_with_optimizer_state_and_reference_names(tmp_path, trained):
    """MindSpore training checkpoints also hold adam_m/adam_v/global_step/learning_rate: dropped."""
    net, x, ref = trained
    ref_names = rename(weights(net), net.config, "mindspore", "reference")
    entries = [{"name": n, "data": ms.Tensor(v)} for n, v in ref_names.items()]
    some = next(iter(ref_names))
    entries += [{"name": f"adam_m.{some}", "data": ms.Tensor(np.zeros_like(ref_names[some]))},
                {"name": f"adam_v.{some}", "data": ms.Tensor(np.zeros_like(ref_names[some]))},
                {"name": "global_step", "data": ms.Tensor(np.array([10], np.int32))},
                {"name": "learning_rate", "data": ms.Tensor(np.array([0.1], np.float32))}]
    path = str(tmp_path / "train.ckpt")
    ms.save_checkpoint(entries, path)
    other = fresh()
    info = load_checkpoint(other, path)
    assert info.naming == "reference" and info.dropped == {"optimizer/training state": 4}
    assert_same_logits(other, x, ref)


def test_mismatch_lists_every_problem_and_loads_nothing(tmp_path, trained):
    net, _, _ = trained
    tensors = rename(weights(net), net.config, "mindspore", "canonical")
    del tensors["exits.1.head.bias"]
    tensors["exits.0.extra.weight"] = np.zeros(3, np.float32)
    tensors["exits.0.head.weight"] = np.zeros((5, 64), np.float32)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    other = fresh()
    before = weights(other)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(other, path)
    msg = str(err.value)
    assert "1 missing" in msg and "exits.1.head.bias" in msg
    assert "1 unexpected" in msg and "exits.0.extra.weight" in msg
    assert "1 mis-shaped" in msg and "exits.0.head.weight: (10, 64) vs (5, 64)" in msg
    after = weights(other)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # never a partial load


def test_wrong_model_and_overrides_are_reported(tmp_path, trained):
    net, _, _ = trained
    path = save_checkpoint(net, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        create_model(NAME, checkpoint_path=path, num_classes=7)
    with pytest.raises(CheckpointMismatchError, match="missing"):
        create_model("dvt_tiny_deit", checkpoint_path=path)


def test_unsupported_or_absent_files(tmp_path, trained):
    net, _, _ = trained
    with pytest.raises(ValueError, match=r"\.ckpt, \.safetensors"):
        save_checkpoint(net, tmp_path / "m.pth")
    with pytest.raises(ValueError, match="unsupported"):
        load_checkpoint(net, tmp_path / "m.pth")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(net, tmp_path / "absent.ckpt")


def test_failed_save_keeps_the_old_file(tmp_path, trained, monkeypatch):
    net, _, _ = trained
    path = save_checkpoint(net, tmp_path / "m.ckpt")
    old = open(path, "rb").read()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(net, path)
    assert open(path, "rb").read() == old
    assert os.listdir(tmp_path) == ["m.ckpt"]


def test_config_sizes_match_reference_checkpoint_layout():
    """The reference naming covers every parameter of the reference cascades (DESIGN.md §2 key counts)."""
    for name, keys in (("dvt_t2t_vit_12", 650), ("dvt_t2t_vit_14", 740), ("dvt_deit_small", 608)):
        assert len(name_map(get_config(name), "reference")) == keys
