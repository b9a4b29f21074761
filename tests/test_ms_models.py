"""MindSpore models: structure (every registered config), semantics against numpy, PYNATIVE forward.

GRAPH mode lives in test_ms_graph.py, training in test_ms_training.py. Tiny configs only, except the
parameter listing, which builds every registered model with initialisation skipped (a few seconds).
"""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from common import get_config, list_models, name_map, parameter_specs, spec_dict
from common.resample import resample_grid_np, resample_matrix
from ms_impl import DVT, ExitOutput, create_model
from ms_impl.models.attention import Attention
from ms_impl.models.factory import skip_init
from ms_impl.models.layers import GELU, DropPath
from ms_impl.models.resample import GridResample
from ms_impl.models.tokenizers import TOKEN_LAYER_NORM_EPS, TokenPerformer, TokenTransformer

TINY = list_models(tiny=True)


@pytest.fixture(autouse=True)
def _pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)


def images(cfg, batch=2, seed=0):
    rng = np.random.RandomState(seed)
    return ms.Tensor(rng.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size).astype(np.float32))


# ---- structure -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_parameters_match_the_common_spec(name):
    """Names, order, shapes and trainable flags equal name_map(cfg, 'mindspore') + param_spec, so the
    element count equals the torch model's (which is tested against the same spec)."""
    cfg = get_config(name)
    with skip_init():  # listing only: no random init of 200M values
        net = DVT(cfg)
    specs = spec_dict(cfg)
    want = [(ms_name, specs[canon].shape, specs[canon].trainable)
            for canon, ms_name in name_map(cfg, "mindspore").items()]
    got = [(n, tuple(p.shape), p.requires_grad) for n, p in net.parameters_and_names()]
    assert got == want
    assert [p.name for p in net.get_parameters()] == [n for n, _, _ in want]  # what .ckpt files store
    assert sum(p.size for p in net.get_parameters()) == sum(s.numel for s in parameter_specs(cfg))


def test_reference_element_counts():
    """DESIGN.md §2 sizes of the official state dicts."""
    for name, count in (("dvt_t2t_vit_12", 22_461_516), ("dvt_t2t_vit_14", 67_881_836),
                        ("dvt_deit_small", 70_442_232)):
        with skip_init():
            net = DVT(get_config(name))
        assert sum(p.size for p in net.get_parameters()) == count, name


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit", "dvt_tiny_t2t_transformer"])
def test_framework_defaults_are_overridden(name):
    """DESIGN.md §6 traps: LayerNorm eps, exact GELU, Conv2d padding mode and bias."""
    cfg = get_config(name)
    net = DVT(cfg)
    norms = gelus = convs = 0
    for path, cell in net.cells_and_names():
        if isinstance(cell, nn.LayerNorm):
            want = TOKEN_LAYER_NORM_EPS if ".tokens_to_token." in path else cfg.norm_eps
            assert cell.epsilon == want, path
            norms += 1
        elif isinstance(cell, GELU):
            assert cell.approximate == "none", path
            gelus += 1
        elif isinstance(cell, nn.Conv2d):
            assert cell.pad_mode == "pad" and cell.has_bias, path
            convs += 1
    assert norms and gelus
    assert convs == (cfg.num_exits if cfg.family == "deit" else 0) + 2 * (cfg.num_exits - 1)


def test_tanh_gelu_config_is_honoured():
    net = DVT(get_config("dvt_tiny_deit", gelu="tanh"))
    gelus = [c for _, c in net.cells_and_names() if isinstance(c, GELU)]
    assert gelus and all(g.approximate == "tanh" for g in gelus)
    assert not any(isinstance(c, nn.GELU) for _, c in net.cells_and_names())


def test_performer_w_is_frozen_orthogonal_and_distinct():
    net = DVT(get_config("dvt_tiny_t2t"))
    ws = [p for n, p in net.parameters_and_names() if n.endswith(".w")]
    assert len(ws) == 6 and not any(w.requires_grad for w in ws)
    for w in ws:
        a = w.asnumpy().astype(np.float64)
        m = a.shape[0]
        np.testing.assert_allclose(a @ a.T, m * np.eye(m), atol=1e-4)
    assert not np.allclose(ws[0].asnumpy(), ws[1].asnumpy())


def test_sinusoid_pos_embed_is_frozen_and_learned_is_not():
    from common.pos_embed import sinusoid_table
    t2t, deit = DVT(get_config("dvt_tiny_t2t")), DVT(get_config("dvt_tiny_deit"))
    pe = t2t.exits[1].pos_embed
    assert not pe.requires_grad
    np.testing.assert_array_equal(pe.asnumpy(), sinusoid_table(pe.shape[1], pe.shape[2]))
    assert deit.exits[1].pos_embed.requires_grad


# ---- forward -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_every_tiny_config_runs_with_the_configured_reuse(name):
    """One logit tensor per exit; exits k >= 1 receive exactly the reuse inputs the config enables."""
    cfg = get_config(name)
    out = create_model(name).forward_exits(images(cfg))  # the code path of construct
    assert len(out) == cfg.num_exits
    for k, o in enumerate(out):
        assert o.logits.shape == (2, cfg.num_classes) and o.logits.dtype == ms.float32
        assert np.isfinite(o.logits.asnumpy()).all()
        assert (o.reused_context is not None) == cfg.uses_feature_reuse(k)
        assert (o.reused_relations is not None) == cfg.uses_relation_reuse(k)


def test_forward_exits_same_path_and_shapes():
    cfg = get_config("dvt_tiny_t2t")
    net = create_model("dvt_tiny_t2t")
    x = images(cfg)
    logits = net(x)
    assert isinstance(logits, tuple) and len(logits) == cfg.num_exits
    inter = net.forward_exits(x)
    assert len(inter) == cfg.num_exits and all(isinstance(o, ExitOutput) for o in inter)
    h, ctx = cfg.num_heads, cfg.context_dim
    for k, (o, ref) in enumerate(zip(inter, logits)):
        t = cfg.exits[k].num_tokens
        np.testing.assert_array_equal(o.logits.asnumpy(), ref.asnumpy())
        assert o.features.shape == (2, t, cfg.dim)
        assert len(o.relations) == cfg.depth and all(r.shape == (2, h, t, t) for r in o.relations)
        if k == 0:
            assert o.reused_context is None and o.reused_relations is None
        else:
            assert len(o.reused_context) == cfg.depth and len(o.reused_relations) == cfg.depth
            for c in o.reused_context:
                assert c.shape == (2, t, ctx)
                assert not c.asnumpy()[:, 0].any()  # zero vector at the cls slot
            assert all(r.shape == (2, h, t, t) for r in o.reused_relations)
    two = net.forward_exits(x, num_exits=2)
    assert len(two) == 2
    np.testing.assert_array_equal(two[1].logits.asnumpy(), inter[1].logits.asnumpy())
    with pytest.raises(ValueError, match="num_exits"):
        net.forward_exits(x, num_exits=4)


def test_any_batch_size_and_sub_batches():
    """No batch-sized constants; an exit run on a sub-batch (early exit) gives the same rows."""
    cfg = get_config("dvt_tiny_deit")
    net = create_model("dvt_tiny_deit")
    x = images(cfg, 3)
    full = net.forward_exits(x)
    one = net(x[1:2])
    for a, b in zip(full, one):
        np.testing.assert_allclose(b.asnumpy(), a.logits.asnumpy()[1:2], atol=1e-6)
    prev = full[0]
    sub = net.exits[1](x[1:], prev.features[1:], tuple(r[1:] for r in prev.relations))
    np.testing.assert_allclose(sub[0].asnumpy(), full[1].logits.asnumpy()[1:], atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 28, 28), (2, 3, 32, 30), (3, 32, 32)])
def test_bad_input_names_the_expected_shape(shape):
    net = create_model("dvt_tiny_deit_2exit")
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 32, 32\), got"):
        net(ms.Tensor(np.zeros(shape, np.float32)))


def test_exit_rejects_missing_or_unexpected_reuse_inputs():
    cfg = get_config("dvt_tiny_deit_2exit")
    net = create_model("dvt_tiny_deit_2exit")
    x = images(cfg, 1)
    with pytest.raises(ValueError, match="feature reuse"):
        net.exits[1](x)
    logits, feats, rels = net.exits[0](x)
    with pytest.raises(ValueError, match="feature reuse"):
        net.exits[0](x, feats, None)


# ---- semantics against numpy ---------------------------------------------------------------------
def test_grid_resample_matches_numpy_reference():
    for s, t in ((2, 3), (3, 4), (4, 6), (7, 10), (10, 14), (5, 5)):
        x = np.random.RandomState(s).randn(2, 3, s, s).astype(np.float32)
        got = GridResample(s, t)(ms.Tensor(x)).asnumpy()
        np.testing.assert_allclose(got, resample_grid_np(x, s, t), atol=1e-6)


def test_token_and_relation_resampling():
    s, t = 3, 4
    rs = GridResample(s, t)
    a = resample_matrix(s, t, np.float64)
    rng = np.random.RandomState(0)
    tok = rng.randn(2, s * s, 5).astype(np.float32)
    got = rs.tokens(ms.Tensor(tok)).asnumpy()
    grid = tok.transpose(0, 2, 1).reshape(2, 5, s, s)
    want = resample_grid_np(grid, s, t).reshape(2, 5, t * t).transpose(0, 2, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # relation maps: P R P^T with P = blockdiag(1, A kron A)
    p = np.zeros((1 + t * t, 1 + s * s))
    p[0, 0] = 1
    p[1:, 1:] = np.kron(a, a)
    r = rng.randn(2, 6, 1 + s * s, 1 + s * s).astype(np.float32)
    got = rs.relations(ms.Tensor(r)).asnumpy()
    np.testing.assert_allclose(got, p @ r.astype(np.float64) @ p.T, atol=1e-5)


def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _dense(cell, x):
    y = x @ cell.weight.asnumpy().astype(np.float64).T
    return y + cell.bias.asnumpy() if cell.has_bias else y


def test_token_performer_matches_the_spec_formula():
    layer = TokenPerformer(dim=12, emb=8, num_features=4, dropout=0.1)
    x = np.random.RandomState(1).randn(2, 9, 12).astype(np.float32)
    got = layer(ms.Tensor(x)).asnumpy()  # eval mode: dropout off
    h = _ln(x.astype(np.float64), layer.norm1.gamma.asnumpy(), layer.norm1.beta.asnumpy(), 1e-5)
    k, q, v = np.split(_dense(layer.kqv, h), 3, axis=-1)  # order k, q, v
    w = layer.w.asnumpy().astype(np.float64)

    def phi(z):
        return np.exp(z @ w.T - (z * z).sum(-1, keepdims=True) / 2) / math.sqrt(4)

    qp, kp = phi(q), phi(k)
    d = qp @ kp.sum(1)[..., None]
    y = qp @ (v.transpose(0, 2, 1) @ kp).transpose(0, 2, 1) / (d + 1e-8)
    y = v + _dense(layer.proj, y)
    mlp = layer.mlp
    z = _ln(y, layer.norm2.gamma.asnumpy(), layer.norm2.beta.asnumpy(), 1e-5)
    want = y + _dense(mlp[2], _gelu(_dense(mlp[0], z)))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_token_transformer_scales_by_input_width_and_skips_from_v():
    layer = TokenTransformer(dim=12, emb=8)
    x = np.random.RandomState(2).randn(2, 9, 12).astype(np.float32)
    got = layer(ms.Tensor(x)).asnumpy()
    h = _ln(x.astype(np.float64), layer.norm1.gamma.asnumpy(), layer.norm1.beta.asnumpy(), 1e-5)
    q, k, v = np.split(_dense(layer.attn.qkv, h), 3, axis=-1)
    a = q @ k.transpose(0, 2, 1) * 12 ** -0.5
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    y = v + _dense(layer.attn.proj, a @ v)
    z = _ln(y, layer.norm2.gamma.asnumpy(), layer.norm2.beta.asnumpy(), 1e-5)
    want = y + _dense(layer.mlp.fc2, _gelu(_dense(layer.mlp.fc1, z)))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_attention_returns_logits_including_the_reused_part():
    attn = Attention(16, 4, qkv_bias=True)
    x = np.random.RandomState(3).randn(2, 5, 16).astype(np.float32)
    reused = np.random.RandomState(4).randn(2, 4, 5, 5).astype(np.float32)
    out, logits = attn(ms.Tensor(x), ms.Tensor(reused))
    qkv = _dense(attn.qkv, x.astype(np.float64)).reshape(2, 5, 3, 4, 4).transpose(2, 0, 3, 1, 4)
    a = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * 4 ** -0.5 + reused
    np.testing.assert_allclose(logits.asnumpy(), a, atol=1e-5)
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = _dense(attn.proj, (p @ qkv[2]).transpose(0, 2, 1, 3).reshape(2, 5, 16))
    np.testing.assert_allclose(out.asnumpy(), want, atol=1e-5)


def test_drop_path_is_per_sample_and_rescaled():
    dp = DropPath(0.5)
    x = ms.Tensor(np.ones((2000, 3, 4), np.float32))
    np.testing.assert_array_equal(dp(x).asnumpy(), x.asnumpy())  # eval mode: identity
    dp.set_train(True)
    y = dp(x).asnumpy()
    per_sample = y.reshape(2000, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    assert 0.4 < (per_sample[:, 0] == 0).mean() < 0.6


def test_device_names_for_tools():
    from ms_impl.runtime import configure, device_target
    assert [device_target(d) for d in ("cpu", "CUDA", "gpu:1", "Ascend", "npu")] == \
        ["CPU", "GPU", "GPU", "Ascend", "Ascend"]
    with pytest.raises(ValueError, match="unknown device"):
        device_target("tpu")
    with pytest.raises(ValueError, match="unknown mode"):
        configure(mode="eager")
    configure(mode="pynative")
    assert ms.get_context("mode") == ms.PYNATIVE_MODE
