"""Parameters of the PyTorch models equal `common.param_spec` for every registered config: trainable
entries are `nn.Parameter`s, frozen ones (sinusoid position table, Performer `w`) persistent buffers.

Full-size models are built on the meta device (shapes only), so all 45 configs take seconds.
"""
import pytest
import torch

import common
from common.naming import name_map
from common.param_spec import parameter_specs
from torch_impl.models import DVT

# DESIGN.md §2: keys and elements of the official checkpoints.
REFERENCE_SIZES = {"dvt_t2t_vit_12": (650, 22_461_516), "dvt_t2t_vit_14": (740, 67_881_836),
                   "dvt_deit_small": (608, 70_442_232)}


def meta_model(name: str) -> DVT:
    with torch.device("meta"):
        return DVT(common.get_config(name))


@pytest.mark.parametrize("name", common.list_models())
def test_named_parameters_equal_param_spec(name):
    model = meta_model(name)
    specs = parameter_specs(model.config)
    got = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert got == [(s.name, s.shape) for s in specs if s.trainable]
    assert all(p.requires_grad for p in model.parameters())
    # Frozen entries are buffers, in the state dict with the spec's names and order; constants
    # (resample matrices) never reach a state dict.
    state = model.state_dict()
    assert [(n, tuple(t.shape)) for n, t in state.items()] == [(s.name, s.shape) for s in specs]
    buffers = dict(model.named_buffers())
    assert {s.name for s in specs if not s.trainable} <= set(buffers)


@pytest.mark.parametrize("name", common.REFERENCE_MODELS)
def test_reference_key_set_and_element_count(name):
    model = meta_model(name)
    mapping = name_map(model.config, "reference")
    ref_names = [mapping[n] for n in model.state_dict()]
    keys, elements = REFERENCE_SIZES[name]
    assert len(set(ref_names)) == len(ref_names) == keys
    assert sum(t.numel() for t in model.state_dict().values()) == elements
    prefixes = ("less_less_token.", "less_token.", "normal_token.")
    assert all(n.startswith(prefixes) for n in ref_names)
    assert any(".feature_resuse_mlp." in n for n in ref_names)  # (sic) reference spelling


@pytest.mark.parametrize("name", ["dvt_t2t_vit_12", "dvt_deit_small", "t2t_vit_t_14", "dvt_tiny_t2t"])
def test_frozen_tensors_are_persistent_buffers(name):
    model = meta_model(name)
    frozen = {n for n, _ in model.named_buffers() if n in model.state_dict()}
    if model.config.pos_embed == "sinusoid":
        performer = [n for n in frozen if n.endswith(".w")]
        assert frozen == {f"exits.{k}.pos_embed" for k in range(model.num_exits)} | set(performer)
        assert len(performer) == (2 * model.num_exits if "t2t_vit_t" not in name else 0)
    else:
        assert frozen == set()  # DeiT learns its position embedding


def test_no_weight_decay_names_are_parameters():
    model = meta_model("dvt_deit_small")
    names = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd == {f"exits.{k}.{p}" for k in range(3) for p in ("cls_token", "pos_embed")}
    assert nwd <= set(names)


def test_config_and_layer_details():
    model = meta_model("dvt_deit_small")
    assert model.config is not None and model.config.name == "dvt_deit_small"
    block = model.exits[2].blocks[0]
    assert block.norm1.eps == 1e-6 and block.feature_reuse_mlp[0].eps == 1e-6
    assert model.exits[1].patch_embed.proj.padding == (3, 3)  # the padded 23x23 tokenizer
    t2t = meta_model("dvt_t2t_vit_12").exits[0].tokens_to_token
    assert t2t.attention1.norm1.eps == 1e-5 and t2t.attention1.m == 32
    assert isinstance(t2t.attention1.mlp[1], torch.nn.GELU) and t2t.attention1.mlp[1].approximate == "none"
