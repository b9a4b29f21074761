"""Configs and registry: the single source of truth validates itself with clear messages."""
import pytest

from common import ConfigError, DVTConfig, get_config, list_models
from common.config import ExitConfig, PatchTokenizerConfig, SoftSplit, T2TTokenizerConfig
from common.registry import REFERENCE_MODELS


def test_registry_covers_the_required_families():
    names = set(list_models())
    assert set(REFERENCE_MODELS) <= names
    for base in ("t2t_vit_12", "t2t_vit_14", "deit_small"):
        for suffix in ("", "_no_reuse", "_feature_reuse", "_relation_reuse", "_2exit"):
            assert f"dvt_{base}{suffix}" in names
    for size in (7, 10, 19, 24):
        assert f"dvt_t2t_vit_{size}" in names
    for single in ("t2t_vit_7", "t2t_vit_14", "t2t_vit_24", "t2t_vit_t_14", "deit_small", "t2t_vit_12_grid7"):
        assert single in names
    assert len(list_models(tiny=True)) >= 8
    assert all("tiny" in n for n in list_models(tiny=True))


@pytest.mark.parametrize("name", list_models())
def test_every_config_builds_and_round_trips(name):
    cfg = get_config(name)
    assert cfg.name == name
    assert cfg.num_exits == len(cfg.grids) >= 1
    assert DVTConfig.from_dict(cfg.to_dict()) == cfg


def test_reference_geometry_matches_design():
    t2t = get_config("dvt_t2t_vit_12")
    assert (t2t.dim, t2t.depth, t2t.num_heads, t2t.mlp_ratio, t2t.qkv_bias, t2t.norm_eps) == (256, 12, 4, 2.0, False, 1e-5)
    assert t2t.grids == (7, 10, 14)
    assert [e.tokenizer.splits[0] for e in t2t.exits] == [SoftSplit(14, 8, 3), SoftSplit(11, 6, 5), SoftSplit(7, 4, 2)]
    assert t2t.pos_embed == "sinusoid" and t2t.gelu == "erf"
    assert get_config("dvt_t2t_vit_14").mlp_hidden == 1152
    deit = get_config("dvt_deit_small")
    assert (deit.qkv_bias, deit.norm_eps, deit.pos_embed) == (True, 1e-6, "learned")
    assert [(e.tokenizer.kernel, e.tokenizer.padding) for e in deit.exits] == [(32, 0), (23, 3), (16, 0)]
    assert get_config("dvt_t2t_vit_14_2exit").grids == (7, 14)
    assert get_config("dvt_tiny_deit_4exit").grids == (2, 3, 4, 6)
    assert get_config("t2t_vit_t_14").exits[0].tokenizer.token_layer == "transformer"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown model 'dvt_t2t_vit12'.*did you mean.*dvt_t2t_vit_12"):
        get_config("dvt_t2t_vit12")


def test_overrides_are_validated():
    assert get_config("dvt_tiny_t2t", num_classes=7).num_classes == 7
    with pytest.raises(ConfigError, match="unknown config field"):
        get_config("dvt_tiny_t2t", num_clases=7)
    with pytest.raises(ConfigError, match=r"exit 0 declares a 2x2 token grid but its tokenizer T2T\[k14/s4/p3, .*\] produces 3x3 from a 40x40"):
        get_config("dvt_tiny_t2t", img_size=40)


def _tiny_deit(**kw):
    base = dict(name="t", family="deit", dim=32, depth=1, num_heads=2, mlp_ratio=2.0, img_size=32,
                exits=(ExitConfig(2, PatchTokenizerConfig(16, 16)), ExitConfig(4, PatchTokenizerConfig(8, 8))))
    base.update(kw)
    return DVTConfig(**base)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_heads=3), "num_heads=3 does not divide dim=32"),
    (dict(exits=(ExitConfig(3, PatchTokenizerConfig(16, 16)),), feature_reuse=False, relation_reuse=False),
     "declares a 3x3 token grid but its tokenizer patch\\[k16/s16/p0\\] produces 2x2"),
    (dict(exits=(ExitConfig(1, PatchTokenizerConfig(32, 32)), ExitConfig(4, PatchTokenizerConfig(8, 8)))),
     "needs s <= t <= 2s .* got s=1, t=4"),
    (dict(exits=(ExitConfig(4, PatchTokenizerConfig(8, 8)),)), "reuse needs at least two exits"),
    (dict(exits=()), "at least one exit"),
    (dict(family="vit"), "family must be"),
    (dict(gelu="fast"), "gelu must be"),
    (dict(drop_path_rate=1.0), "drop_path_rate must be in"),
    (dict(exits=(ExitConfig(2, T2TTokenizerConfig((SoftSplit(16, 16), SoftSplit(1, 1)))),),
          feature_reuse=False, relation_reuse=False),
     "expects PatchTokenizerConfig"),
])
def test_invalid_configs_name_the_problem(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _tiny_deit(**kwargs)


def test_reuse_free_cascade_may_shrink_or_jump_grids():
    cfg = _tiny_deit(exits=(ExitConfig(1, PatchTokenizerConfig(32, 32)), ExitConfig(4, PatchTokenizerConfig(8, 8))),
                     feature_reuse=False, relation_reuse=False)
    assert cfg.grids == (1, 4)


def test_drop_path_schedule_is_linear():
    cfg = get_config("dvt_t2t_vit_12")
    rates = cfg.drop_path_rates()
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and len(rates) == 12
