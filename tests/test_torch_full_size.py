"""Full-size models at batch 1: forward, fvcore == analytic FLOPs per exit, reference-layout round trip.

Each model is built once per module (seeded) and shared by the tests below to keep CPU time low.
"""
import functools
import itertools

import pytest
import torch

from common.flops import cumulative_flops
from torch_impl import create_model, load_checkpoint
from torch_impl.checkpoint import named_state_dict
from torch_impl.flops import fvcore_exit_flops, fvcore_flops

pytestmark = pytest.mark.slow

REFERENCE = ("dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small")
# Other full-size configs traced with fvcore: an ablation, two exits, transformer token layers, the MindSpore port.
OTHERS = ("dvt_t2t_vit_14_no_reuse", "dvt_deit_small_2exit", "t2t_vit_t_14", "dvt_deit_small_msref")


@functools.lru_cache(maxsize=None)
def model(name: str):
    torch.manual_seed(0)
    return create_model(name).eval()


def image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_model_forward(name):
    with torch.no_grad():
        out = model(name)(image())
    assert len(out) == 3 and all(o.shape == (1, 1000) and torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("name", REFERENCE + OTHERS)
def test_fvcore_per_exit_flops_equal_analytic(name):
    m = model(name)
    assert list(itertools.accumulate(fvcore_exit_flops(m))) == cumulative_flops(m.config)


def test_fvcore_exit_prefix():
    m = model("dvt_t2t_vit_12")
    assert fvcore_flops(m, num_exits=1) == cumulative_flops(m.config)[0] == 472_485_440


def test_reference_layout_checkpoint_round_trip(tmp_path):
    """A state dict under the official key names, in the released container, loads strictly and
    reproduces the outputs of the model it came from."""
    src = model("dvt_t2t_vit_12")
    path = tmp_path / "dvt_t2t_vit_12.pth"
    torch.save({"model_state_dict": named_state_dict(src, "reference"), "flops": [0.4725, 1.4625, 3.4975]}, path)
    torch.manual_seed(1)
    dst = create_model("dvt_t2t_vit_12").eval()
    info = load_checkpoint(dst, path)
    assert info.naming == "reference" and info.container == "model_state_dict" and info.report.ok
    x = image(1)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(src(x), dst(x)))
