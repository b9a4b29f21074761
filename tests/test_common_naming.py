"""The one mapping table between canonical, MindSpore and reference parameter names."""
import numpy as np
import pytest

from common import get_config, list_models
from common.checkpoints import (CheckpointMismatchError, check_against_config, extract_state_dict,
                                infer_configs, resolve_naming)
from common.naming import NamingError, detect_naming, name_map, rename
from common.param_spec import parameter_specs


@pytest.mark.parametrize("name", list_models())
def test_maps_are_bijective(name):
    cfg = get_config(name)
    for naming in ("canonical", "mindspore", "reference"):
        if naming == "reference" and cfg.num_exits > 3:
            with pytest.raises(NamingError, match="1-3 exits"):
                name_map(cfg, naming)
            continue
        m = name_map(cfg, naming)
        assert len(set(m.values())) == len(m) == len(parameter_specs(cfg))


def test_examples_of_each_rule():
    cfg = get_config("dvt_t2t_vit_12")
    ms, ref = name_map(cfg, "mindspore"), name_map(cfg, "reference")
    assert ms["exits.1.blocks.3.norm2.weight"] == "exits.1.blocks.3.norm2.gamma"
    assert ms["exits.1.blocks.3.feature_reuse_mlp.0.bias"] == "exits.1.blocks.3.feature_reuse_mlp.0.beta"
    assert ms["exits.1.blocks.3.mlp.fc1.weight"] == "exits.1.blocks.3.mlp.fc1.weight"
    assert ref["exits.0.tokens_to_token.attention1.w"] == "less_less_token.tokens_to_token.attention1.w"
    assert ref["exits.2.blocks.0.feature_reuse_mlp.1.fc2.bias"] == "normal_token.blocks.0.feature_resuse_mlp.1.fc2.bias"
    two = name_map(get_config("dvt_deit_small_2exit"), "reference")
    assert two["exits.0.head.weight"] == "less_token.head.weight"
    single = name_map(get_config("t2t_vit_14"), "reference")
    assert single["exits.0.blocks.0.attn.qkv.weight"] == "blocks.0.attn.qkv.weight"


def _fake_state(cfg, naming):
    specs = {s.name: s for s in parameter_specs(cfg)}
    return {target: np.zeros(specs[canon].shape, np.float32) for canon, target in name_map(cfg, naming).items()}


def test_rename_round_trip_and_detection():
    cfg = get_config("dvt_tiny_t2t")
    ref = _fake_state(cfg, "reference")
    assert detect_naming(ref, cfg) == "reference"
    ms = rename(ref, cfg, "reference", "mindspore")
    assert detect_naming(ms, cfg) == "mindspore"
    assert rename(ms, cfg, "mindspore", "reference").keys() == ref.keys()


def test_containers_prefixes_and_bookkeeping_are_unwrapped():
    cfg = get_config("dvt_tiny_deit")
    state = _fake_state(cfg, "reference")
    wrapped = {"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "flops": [1.0, 2.0]}
    ex = extract_state_dict(wrapped)
    assert ex.container == "model_state_dict" and ex.tensors.keys() == state.keys()
    assert ex.extras["flops"] == [1.0, 2.0]
    ema = extract_state_dict({"state_dict": state, "state_dict_ema": state}, use_ema=True)
    assert ema.container == "state_dict_ema"
    ms = _fake_state(cfg, "mindspore")
    ms.update({f"adam_m.{k}": v for k, v in ms.items()}, global_step=np.zeros(1))
    ex = extract_state_dict(ms)
    assert ex.dropped == {"optimizer/training state": len(state) + 1}
    assert check_against_config({k: v.shape for k, v in ex.tensors.items()}, cfg, "mindspore").ok


def test_mismatch_report_lists_every_problem():
    cfg = get_config("dvt_tiny_t2t")
    shapes = {k: v.shape for k, v in _fake_state(cfg, "canonical").items()}
    del shapes["exits.0.head.bias"]
    shapes["exits.1.head.weight"] = (11, 64)
    shapes["exits.9.extra"] = (1,)
    report = check_against_config(shapes, cfg, "canonical")
    assert report.missing == ["exits.0.head.bias"]
    assert report.unexpected == ["exits.9.extra"]
    assert report.mis_shaped == [("exits.1.head.weight", (10, 64), (11, 64))]
    msg = str(CheckpointMismatchError(report, "model 'dvt_tiny_t2t'"))
    assert "1 missing" in msg and "exits.0.head.bias" in msg and "(10, 64) vs (11, 64)" in msg
    with pytest.raises(CheckpointMismatchError, match="no key matches"):
        resolve_naming({"foo": 1}, cfg)


def test_infer_configs_finds_the_unique_fit():
    target = get_config("dvt_tiny_t2t_relation_reuse")
    shapes = {k: v.shape for k, v in _fake_state(target, "reference").items()}
    fits = infer_configs(shapes, [get_config(n) for n in list_models(tiny=True)])
    assert [(c.name, n) for c, n in fits] == [("dvt_tiny_t2t_relation_reuse", "reference")]
