"""The model API of ms_impl: the same names and answers as torch_impl's timm API, and MindCV's create_model.

Tiny configs in PYNATIVE mode (GRAPH mode for the forward), compared against the torch model with the same
weights where a number can be compared.
"""
import mindspore as ms
import numpy as np
import pytest
import torch

import ms_impl
import torch_impl
from common import get_config
from common.exits import per_exit
from ms_impl import create_model
from ms_impl.checkpoint import save_checkpoint
from torch_impl.checkpoint import named_state_dict

TOL = 2e-5


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


def pair(name, tmp_path, **overrides):
    """A torch model and the MindSpore model holding its weights (through a MindSpore .ckpt)."""
    torch.manual_seed(0)
    tm = torch_impl.create_model(name, **overrides).eval()
    path = tmp_path / f"{name}.safetensors"
    from safetensors.torch import save_file
    save_file(named_state_dict(tm, "canonical"), str(path))
    return tm, create_model(name, checkpoint_path=path, **overrides)


def images(cfg, batch=2, seed=0, chans=None):
    return np.random.RandomState(seed).randn(batch, chans or cfg.in_chans, cfg.img_size, cfg.img_size).astype(
        np.float32)


def close(a, b, tol=TOL):
    np.testing.assert_allclose(a.asnumpy(), b.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["dvt_tiny_deit_2exit", "t2t_vit_tiny"])
def test_features_head_and_intermediates_match_torch(pynative, tmp_path, name):
    tm, net = pair(name, tmp_path)
    cfg = tm.config
    assert [i["module"] for i in net.feature_info] == [i["module"] for i in tm.feature_info]
    x = images(cfg)
    xt, xm = torch.from_numpy(x), ms.Tensor(x)
    with torch.no_grad():
        t_feats, t_final, t_inter = tm.forward_features(xt), *tm.forward_intermediates(xt, indices=[0, -1])
        t_pre = tm.forward_head(t_feats, pre_logits=True)
    m_feats = net.forward_features(xm)
    m_final, m_inter = net.forward_intermediates(xm, indices=[0, -1])
    assert isinstance(net(xm), tuple if tm.num_exits > 1 else ms.Tensor)
    for a, b in zip(per_exit(m_feats), per_exit(t_feats)):
        close(a, b)
    for a, b in zip(per_exit(m_final), per_exit(t_final)):
        close(a, b)
    for a, b in zip(per_exit(net.forward_head(m_feats, pre_logits=True)), per_exit(t_pre)):
        close(a, b)
    g = cfg.exits[-1].grid
    assert [a.shape for a in m_inter] == [(2, cfg.dim, g, g)] * 2
    for a, b in zip(m_inter, t_inter):
        close(a, b)
    nlc = net.forward_intermediates(xm, indices=1, output_fmt="NLC", norm=True, intermediates_only=True,
                                    exit_index=0)
    with torch.no_grad():
        ref = tm.forward_intermediates(xt, indices=1, output_fmt="NLC", norm=True, intermediates_only=True,
                                       exit_index=0)
    close(nlc[0], ref[0])


def test_classifier_reset_and_identity_heads(pynative):
    cfg = get_config("dvt_tiny_deit")
    net = create_model("dvt_tiny_deit")
    x = ms.Tensor(images(cfg))
    assert net.num_features == net.head_hidden_size == cfg.dim and net.in_chans == 3
    assert len(net.get_classifier()) == 3
    net.reset_classifier(0)
    assert net.num_classes == 0 == net.config.num_classes
    assert [o.shape for o in net(x)] == [(2, cfg.dim)] * 3
    net.reset_classifier(4, "avg")
    assert net.global_pool == "avg" and [o.shape for o in net(x)] == [(2, 4)] * 3
    headless = create_model("dvt_tiny_deit", num_classes=0)
    assert not any("head" in n for n, _ in headless.parameters_and_names())
    with pytest.raises(ValueError, match="num_classes=0"):
        headless.forward_adaptive(x, [0.5, 0.5])


def test_graph_mode_forward_features_and_head(pynative):
    cfg = get_config("dvt_tiny_deit_2exit")
    net = create_model("dvt_tiny_deit_2exit", num_classes=0, global_pool="avg")
    x = ms.Tensor(images(cfg))
    eager = net(x)
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = net(x)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for a, b in zip(graph, eager):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-6, atol=1e-6)
    assert [o.shape for o in graph] == [(2, cfg.dim)] * 2


def test_grad_checkpointing_recompute_gives_the_same_gradients(pynative):
    cfg = get_config("dvt_tiny_deit_2exit")
    x = ms.Tensor(images(cfg, 3))
    y = ms.Tensor(np.array([0, 1, 2], np.int32))
    ce = ms.nn.CrossEntropyLoss()
    results = []
    for enable in (False, True):
        ms.set_seed(0)
        net = create_model("dvt_tiny_deit_2exit")
        net.set_train(True)
        if enable:
            net.set_grad_checkpointing()
            assert all(b._has_config_recompute for e in net.exits for b in e.blocks)  # MindSpore's own flag

        def loss_fn(inp, lab):
            loss = 0.0
            for z in per_exit(net(inp)):
                loss = loss + ce(z, lab)
            return loss

        loss, grads = ms.value_and_grad(loss_fn, None, net.trainable_params())(x, y)
        results.append((float(loss), [g.asnumpy() for g in grads]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    for a, b in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot be undone"):
        net.set_grad_checkpointing(False)


def test_group_matcher_and_no_weight_decay_name_the_same_parameters_as_torch():
    from timm.models._manipulate import group_with_matcher
    cfg = get_config("dvt_tiny_t2t")
    net = create_model("dvt_tiny_t2t")
    tm = torch_impl.create_model("dvt_tiny_t2t")
    ms_names = [(p.name, p) for p in net.trainable_params()]
    from common.naming import rename
    canon = rename(dict(ms_names), cfg, "mindspore", "canonical")
    ms_groups = group_with_matcher(((n, None) for n in canon), net.group_matcher(), reverse=True)
    torch_groups = group_with_matcher(tm.named_parameters(), tm.group_matcher(), reverse=True)
    assert ms_groups == torch_groups
    assert net.no_weight_decay() == tm.no_weight_decay()


def test_mindcv_create_model_arguments(pynative, tmp_path):
    """num_classes / in_channels / checkpoint_path (strict) / pretrained=True (heads and first layers adapted)."""
    name = "t2t_vit_tiny"  # a T2T exit: the first layer to adapt is LayerNorm + Linear
    src = create_model(name)
    path = save_checkpoint(src, tmp_path / "src.ckpt")
    same = create_model(name, checkpoint_path=path)
    x = ms.Tensor(images(src.config))
    np.testing.assert_array_equal(same(x).asnumpy(), src(x).asnumpy())
    with pytest.raises(ms_impl.CheckpointMismatchError):
        create_model(name, num_classes=3, checkpoint_path=path)  # strict: the head does not fit
    with pytest.raises(ValueError, match="checkpoint_path"):
        create_model(name, pretrained=True)
    gray = create_model(name, num_classes=3, in_channels=1, pretrained=True, checkpoint_path=path)
    assert gray.config.in_chans == 1 and gray.num_classes == 3
    x1 = images(src.config, chans=1)
    feats_gray = gray.forward_features(ms.Tensor(x1))
    feats_rgb = src.forward_features(ms.Tensor(np.repeat(x1, 3, axis=1)))
    np.testing.assert_allclose(feats_gray.asnumpy(), feats_rgb.asnumpy(), rtol=1e-4, atol=1e-4)  # same backbone
    assert gray(ms.Tensor(x1)).shape == (2, 3)
