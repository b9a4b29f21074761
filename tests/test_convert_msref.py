"""tools/convert_weights.py on real checkpoint files of the MindSpore port (written by its own code, see
parity/make_msref_golden.py): inferred, strict, optimizer state dropped and counted, and back bit-exact."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from common.naming import expected_shapes
from common import get_config

ROOT = Path(__file__).resolve().parents[1]
PORT = ROOT / "parity" / "golden" / "msref"
WEIGHTS, TRAINING = PORT / "dvt_deit_small_msref.ckpt", PORT / "dvt_deit_small_msref_train.ckpt"
NAME = "dvt_tiny_msref"  # the port's cascade at the fixtures' reduced width and depth

ms = pytest.importorskip("mindspore")


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("convert_weights_msref", ROOT / "tools" / "convert_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cli, capsys, *args):
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def ckpt_arrays(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if isinstance(v, ms.Tensor)}


def test_port_checkpoint_to_torch_and_back_is_bit_exact(cli, capsys, tmp_path):
    status, out, err = run(cli, capsys, WEIGHTS, tmp_path / "w.pth")
    assert status == 0, err
    assert f"inferred model: {NAME} (msref naming)" in out
    status, out, err = run(cli, capsys, tmp_path / "w.pth", tmp_path / "back.ckpt", "--naming", "msref")
    assert status == 0, err
    assert "msref names" in out
    original, back = ckpt_arrays(WEIGHTS), ckpt_arrays(tmp_path / "back.ckpt")
    assert back.keys() == original.keys()
    assert all(np.array_equal(back[k], original[k]) for k in original)


def test_training_checkpoint_drops_and_counts_adam_state(cli, capsys, tmp_path):
    status, out, err = run(cli, capsys, TRAINING, tmp_path / "w.safetensors")
    assert status == 0, err
    port_tensors = len(expected_shapes(get_config(NAME), "msref"))
    assert f"dropped:    {2 * port_tensors + 4} tensors of optimizer/training state" in out  # + 4 scalars
    from safetensors.numpy import load_file
    from safetensors import safe_open
    with safe_open(str(tmp_path / "w.safetensors"), "np") as f:
        assert json.loads(f.metadata()["config"])["name"] == NAME
    weights = ckpt_arrays(TRAINING)
    converted = load_file(str(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(converted["exits.1.blocks.0.attn.qkv.bias"], np.concatenate(
        [weights[f"normal_token.layers.0.attn.to_{c}.bias"] for c in "qkv"]))


def test_msref_naming_is_refused_where_the_layout_cannot_hold_the_model(cli, capsys, tmp_path):
    status, _, err = run(cli, capsys, WEIGHTS, tmp_path / "w.safetensors")
    assert status == 0, err
    status, _, err = run(cli, capsys, tmp_path / "w.safetensors", tmp_path / "x.pth", "--naming", "msref")
    assert status == 2 and "canonical or reference" in err
    # a mis-shaped port tensor is reported in the port's own names, nothing written
    arrays = ckpt_arrays(WEIGHTS)
    arrays["normal_token.layers.1.attn.to_k.weight"] = arrays["normal_token.layers.1.attn.to_k.weight"][:8]
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()], str(tmp_path / "bad.ckpt"))
    status, _, err = run(cli, capsys, tmp_path / "bad.ckpt", tmp_path / "bad.pth", "--model", NAME)
    assert status == 2 and "normal_token.layers.1.attn.to_k.weight: (16, 16) vs (8, 16)" in err
    assert not (tmp_path / "bad.pth").exists()
