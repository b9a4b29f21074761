"""Analytic FLOPs reproduce the paper's fvcore counts (DESIGN.md §4); parameter specs match §2."""
import pytest

from common import count_parameters, cumulative_gflops, get_config, list_models, parameter_specs
from common.flops import cascade_flops
from common.naming import name_map

# DESIGN.md §4: cumulative GFLOPs at exits 1/2/3, measured with fvcore on the reference code.
DESIGN_GFLOPS = {
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


@pytest.mark.parametrize("name", sorted(DESIGN_GFLOPS))
def test_flops_match_design_within_0p2_percent(name):
    got = cumulative_gflops(get_config(name))
    expected = DESIGN_GFLOPS[name]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        # DESIGN rounds to 4 decimals; the bound below is 0.2% as the issue asks, we measure <0.005%.
        assert abs(g - e) / e < 0.002, (name, got, expected)
        assert abs(g - e) < 6e-5, (name, got, expected)


def test_two_exit_variant_costs_exit1_plus_reused_exit3():
    three, two = get_config("dvt_t2t_vit_14"), get_config("dvt_t2t_vit_14_2exit")
    assert cumulative_gflops(two)[0] == cumulative_gflops(three)[0]
    # Its 14x14 exit tokenizes like the plain T2T-ViT-14 and pays for reusing a 7x7 exit instead of a 10x10 one.
    plain = cascade_flops(get_config("t2t_vit_14"))[0]
    f2, f3 = cascade_flops(two)[1], cascade_flops(three)[2]
    assert f2.tokenizer == plain.tokenizer and f2.blocks == f3.blocks
    assert 0 < f2.reuse < f3.reuse


def test_reuse_overhead_is_the_difference_between_ablations():
    full = cascade_flops(get_config("dvt_t2t_vit_12"))
    none = cascade_flops(get_config("dvt_t2t_vit_12_no_reuse"))
    for k in range(3):
        assert full[k].tokenizer == none[k].tokenizer and full[k].head == none[k].head
    assert none[1].reuse == 0 and full[1].reuse > 0


# DESIGN.md §2: keys and elements of the reference checkpoints.
DESIGN_PARAMS = {"dvt_t2t_vit_12": (650, 22_461_516), "dvt_t2t_vit_14": (740, 67_881_836),
                 "dvt_deit_small": (608, 70_442_232)}


@pytest.mark.parametrize("name", sorted(DESIGN_PARAMS))
def test_parameter_spec_matches_reference_checkpoint(name):
    cfg = get_config(name)
    keys, elements = DESIGN_PARAMS[name]
    assert len(parameter_specs(cfg)) == keys
    assert count_parameters(cfg) == elements
    ref = name_map(cfg, "reference").values()
    prefixes = {"less_less_token", "less_token", "normal_token"}
    assert {k.split(".")[0] for k in ref} == prefixes
    assert any(".feature_resuse_mlp.0.weight" in k for k in ref)


def test_frozen_parameters_are_marked():
    t2t = {s.name: s for s in parameter_specs(get_config("dvt_t2t_vit_12"))}
    assert not t2t["exits.0.pos_embed"].trainable
    assert not t2t["exits.2.tokens_to_token.attention1.w"].trainable
    assert t2t["exits.2.tokens_to_token.attention1.w"].shape == (32, 64)
    deit = {s.name: s for s in parameter_specs(get_config("dvt_deit_small"))}
    assert deit["exits.0.pos_embed"].trainable
    assert deit["exits.1.patch_embed.proj.weight"].shape == (384, 3, 23, 23)
    assert deit["exits.2.relation_reuse_conv.0.weight"].shape == (216, 72, 1, 1)


@pytest.mark.parametrize("name", list_models())
def test_flops_are_positive_and_increasing(name):
    flops = cumulative_gflops(get_config(name))
    assert all(f > 0 for f in flops)
    assert all(b > a for a, b in zip(flops, flops[1:]))
