"""Every tiny registered config, both directions, through tools/convert_weights.py with real files.

Per config (fixed seeds, every parameter perturbed so no bias is zero and no LayerNorm weight is one):
- torch -> MindSpore: the seeded torch model is saved as `.pth`, converted to `.ckpt` by the CLI (which
  must infer the config), loaded by `ms_impl.create_model`; random and structured images; per-exit
  logits within 1e-5, every block's attention logits, the final features and the reused context /
  relations within 1e-4, identical argmax and identical exit decisions over a threshold sweep.
- the round trip torch -> ms -> torch through the CLI is bit-exact, and so are the weights MindSpore loaded.
- MindSpore -> torch: MindSpore-initialised weights, `.ckpt` -> CLI -> `.pth` -> `torch_impl.create_model`,
  the same comparisons with MindSpore as the reference, and ms -> torch -> ms bit-exact.
- a reference-layout state dict synthesised from DESIGN.md §2 (parity/reference_layout.py) in the
  released container converts to both frameworks and loads strictly, bit-exact.
"""
import numpy as np
import pytest

from common import get_config, list_models
from common.naming import rename
from paritylib import (TOL_LOGITS, compare_decisions, compare_outputs, convert_ok, images, logits_of, ms_outputs,
                       ms_state, need, seed_of, torch_model, torch_outputs, torch_state, ms_model)
from reference_layout import released_container, synthesise

TINY = list_models(tiny=True)
N_RANDOM = 4  # plus the 5 structured images of paritylib.STRUCTURED


def _pth_state(path) -> dict:
    import torch
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert obj["naming"] == "canonical"
    return {k: v.numpy() for k, v in obj["state_dict"].items()}


def _assert_bit_exact(got: dict, want: dict, what: str):
    assert set(got) == set(want), f"{what}: names differ: {sorted(set(got) ^ set(want))[:5]}"
    bad = [k for k in want if got[k].dtype != want[k].dtype or not np.array_equal(got[k], want[k])]
    assert not bad, f"{what}: {len(bad)} tensors not bit-exact, e.g. {bad[:5]}"


@pytest.fixture(scope="module", params=TINY)
def torch_case(request, tmp_path_factory):
    """A seeded torch model, its `.pth`, and the CLI's `.ckpt` of it."""
    need("torch")
    need("mindspore")
    import torch_impl
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    model = torch_model(name, seed_of(name))
    pth = torch_impl.save_checkpoint(model, tmp / "torch.pth")
    printed = convert_ok(pth, tmp / "model.ckpt")
    return name, model, tmp, printed


def test_torch_to_mindspore(torch_case):
    import ms_impl
    name, model, tmp, printed = torch_case
    assert f"inferred model: {name} (canonical naming" in printed and "tensors:" in printed
    net = ms_impl.create_model(name, checkpoint_path=tmp / "model.ckpt")
    _assert_bit_exact(ms_state(net), torch_state(model), "weights MindSpore loaded")
    x = images(get_config(name), N_RANDOM, seed=seed_of(name, "images"))
    ref, got = torch_outputs(model, x), ms_outputs(net, x)
    failures = compare_outputs(name, "torch->ms", ref, got, TOL_LOGITS)
    failures += compare_decisions(name, "torch->ms", logits_of(ref), logits_of(got), TOL_LOGITS)
    assert not failures, "\n".join(failures)


def test_round_trip_torch_ms_torch_is_bit_exact(torch_case):
    name, model, tmp, _ = torch_case
    convert_ok(tmp / "model.ckpt", tmp / "back.pth")
    _assert_bit_exact(_pth_state(tmp / "back.pth"), torch_state(model), "torch -> ms -> torch")


@pytest.mark.parametrize("name", TINY)
def test_mindspore_to_torch(name, tmp_path):
    need("torch")
    need("mindspore")
    import ms_impl
    import torch_impl
    net = ms_model(name, seed_of(name, "ms"))
    ckpt = ms_impl.save_checkpoint(net, tmp_path / "ms.ckpt")
    convert_ok(ckpt, tmp_path / "torch.pth")
    model = torch_impl.create_model(name, checkpoint_path=tmp_path / "torch.pth").eval()
    _assert_bit_exact(torch_state(model), ms_state(net), "weights torch loaded")
    x = images(get_config(name), N_RANDOM, seed=seed_of(name, "images-ms"))
    ref, got = ms_outputs(net, x), torch_outputs(model, x)
    failures = compare_outputs(name, "ms->torch", ref, got, TOL_LOGITS)
    failures += compare_decisions(name, "ms->torch", logits_of(ref), logits_of(got), TOL_LOGITS)
    assert not failures, "\n".join(failures)
    convert_ok(tmp_path / "torch.pth", tmp_path / "back.ckpt")  # ms -> torch -> ms
    back = ms_impl.create_model(name, checkpoint_path=tmp_path / "back.ckpt")
    _assert_bit_exact(ms_state(back), ms_state(net), "ms -> torch -> ms")


@pytest.mark.parametrize("name", [n for n in TINY if get_config(n).num_exits <= 3])
def test_reference_layout_loads_in_both(name, tmp_path):
    """DESIGN.md §2 key spec -> released container -> CLI -> each framework, strictly, bit-exact (the same
    weights then compute the same function: the other tests here)."""
    torch = need("torch")
    need("mindspore")
    import ms_impl
    import torch_impl
    cfg = get_config(name)
    state = synthesise(cfg, seed_of(name, "reference"))
    torch.save(released_container({k: torch.from_numpy(v) for k, v in state.items()}), tmp_path / "released.pth")
    printed = convert_ok(tmp_path / "released.pth", tmp_path / "model.ckpt")
    assert f"inferred model: {name} (reference naming)" in printed
    convert_ok(tmp_path / "released.pth", tmp_path / "model.pth")
    net = ms_impl.create_model(name, checkpoint_path=tmp_path / "model.ckpt")  # strict by default
    model = torch_impl.create_model(name, checkpoint_path=tmp_path / "model.pth").eval()
    canonical = rename(state, cfg, "reference", "canonical")
    _assert_bit_exact(ms_state(net), canonical, "MindSpore from the reference layout")
    _assert_bit_exact(torch_state(model), canonical, "torch from the reference layout")
