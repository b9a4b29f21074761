"""fvcore counts on our modules equal the analytic FLOPs of `common.flops`, exactly (tiny configs;
full-size models in test_torch_full_size.py), and the analytic counts match the paper (DESIGN.md §4).
"""
import itertools

import pytest

import common
from common.flops import cumulative_flops
from torch_impl import create_model
from torch_impl.flops import RESAMPLE_OP, flop_analysis, fvcore_exit_flops, fvcore_flops

# DESIGN.md §4, cumulative GFLOPs per exit (measured with fvcore on the reference code).
PAPER_GFLOPS = {
    "dvt_t2t_vit_12": (0.4725, 1.4625, 3.4975),
    "dvt_t2t_vit_12_no_reuse": (0.4725, 1.3707, 3.1454),
    "dvt_t2t_vit_12_feature_reuse": (0.4725, 1.4251, 3.3077),
    "dvt_t2t_vit_12_relation_reuse": (0.4725, 1.4081, 3.3353),
    "dvt_t2t_vit_14": (1.2065, 3.8409, 9.3276),
    "dvt_t2t_vit_14_no_reuse": (1.2065, 3.6112, 8.4115),
    "dvt_deit_small": (1.1453, 3.6563, 8.8438),
    "dvt_deit_small_no_reuse": (1.1453, 3.4501, 8.0584),
    "t2t_vit_12_grid7": (0.4725,), "t2t_vit_12_grid10": (0.8982,), "t2t_vit_12": (1.7748,),
    "t2t_vit_14_grid7": (1.2065,), "t2t_vit_14_grid10": (2.4047,), "t2t_vit_14": (4.8003,),
    "deit_small_grid7": (1.1453,), "deit_small_grid10": (2.3048,), "deit_small": (4.6083,),
}
@pytest.mark.parametrize("name", sorted(PAPER_GFLOPS))
def test_analytic_flops_match_paper_table(name):
    got = [f / 1e9 for f in cumulative_flops(common.get_config(name))]
    assert got == pytest.approx(PAPER_GFLOPS[name], abs=6e-5)


@pytest.mark.parametrize("name", common.list_models(tiny=True))
def test_fvcore_exit_flops_equal_analytic_tiny(name):
    model = create_model(name)
    assert list(itertools.accumulate(fvcore_exit_flops(model))) == cumulative_flops(model.config)


@pytest.mark.parametrize("name", ["dvt_tiny_deit_4exit", "dvt_tiny_t2t"])
def test_fvcore_exit_prefix_flops_equal_analytic(name):
    """`num_exits` truncates the traced cascade: the cost of reaching exit k."""
    model = create_model(name)
    assert [fvcore_flops(model, k) for k in range(1, model.num_exits + 1)] == cumulative_flops(model.config)


def test_resampling_is_priced_by_our_handle():
    analysis = flop_analysis(create_model("dvt_tiny_t2t"))
    assert analysis.by_operator()[RESAMPLE_OP.split("::", 1)[1]] > 0
    # Nothing fvcore skipped does arithmetic it would charge (only elementwise/free ops remain).
    skipped = set(analysis.unsupported_ops())
    assert skipped <= {"aten::add", "aten::add_", "aten::mul", "aten::div", "aten::sub", "aten::exp", "aten::sum",
                       "aten::softmax", "aten::gelu", "aten::im2col", "aten::expand_as", "aten::new_zeros"}, skipped
