"""Forward behaviour of the PyTorch DVT: shapes, reuse plumbing, dtypes, gradients, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common
from common.exits import per_exit
from common.resample import resample_grid_np, resample_matrix
from torch_impl import DVT, create_model
from torch_impl.models.resample import GridResample, GridResampleFn

TINY = common.list_models(tiny=True)


def seeded(name: str, seed: int = 0, **overrides) -> DVT:
    torch.manual_seed(seed)
    return create_model(name, **overrides)


def images(cfg, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_train_and_eval(name):
    model = seeded(name)
    x = images(model.config, batch=3)
    for train in (True, False):
        model.train(train)
        out = model(x)
        if model.config.num_exits == 1:  # a single-exit backbone returns one tensor, as timm models do
            assert isinstance(out, torch.Tensor)
            out = (out,)
        assert isinstance(out, tuple) and len(out) == model.config.num_exits
        assert all(o.shape == (3, model.config.num_classes) and torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("name", common.list_models(tiny=False))
def test_full_size_forward_shapes_on_meta(name):
    """Every full-size config runs end to end on the meta device (shapes, no arithmetic): per-exit features,
    logits and pre-logits (timm's default-cfg shapes)."""
    with torch.device("meta"):
        model = DVT(common.get_config(name))
    cfg = model.config
    feats = model.forward_features(torch.empty(1, cfg.in_chans, cfg.img_size, cfg.img_size, device="meta"))
    out, pre = per_exit(model.forward_head(feats)), per_exit(model.forward_head(feats, pre_logits=True))
    assert [tuple(o.shape) for o in out] == [(1, cfg.num_classes)] * cfg.num_exits
    assert [tuple(f.shape) for f in per_exit(feats)] == [(1, e.num_tokens, cfg.dim) for e in cfg.exits]
    assert [tuple(p.shape) for p in pre] == [(1, model.head_hidden_size)] * cfg.num_exits


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit_4exit", "dvt_tiny_t2t_feature_reuse",
                                  "dvt_tiny_t2t_relation_reuse", "t2t_vit_tiny"])
def test_forward_exits(name):
    model = seeded(name).eval()
    cfg, x = model.config, images(model.config)
    with torch.no_grad():
        logits = per_exit(model(x))
        outs = model.forward_exits(x)
        prefix = model.forward_exits(x, num_exits=1)
    assert len(outs) == cfg.num_exits and len(prefix) == 1
    for k, (o, lg) in enumerate(zip(outs, logits)):
        T, H, L = cfg.exits[k].num_tokens, cfg.num_heads, cfg.depth
        assert torch.equal(o.logits, lg)
        assert o.features.shape == (2, T, cfg.dim)
        assert len(o.relations) == L and all(r.shape == (2, H, T, T) for r in o.relations)
        if cfg.uses_feature_reuse(k):
            assert len(o.reused_context) == L
            assert all(c.shape == (2, T, cfg.context_dim) for c in o.reused_context)
            assert all(torch.all(c[:, 0] == 0) for c in o.reused_context)  # zero cls slot
        else:
            assert o.reused_context is None
        if cfg.uses_relation_reuse(k):
            assert len(o.reused_relations) == L and all(r.shape == (2, H, T, T) for r in o.reused_relations)
        else:
            assert o.reused_relations is None
    assert torch.equal(prefix[0].logits, logits[0])
    with pytest.raises(ValueError, match="num_exits"):
        model.forward_exits(x, num_exits=cfg.num_exits + 1)


@pytest.mark.parametrize("name,module", [("dvt_tiny_t2t_feature_reuse", "blocks.1.mlp.fc2"),
                                         ("dvt_tiny_t2t_relation_reuse", "blocks.0.attn.qkv")])
def test_reuse_reads_the_previous_exit(name, module):
    """Exit 1 sees exit 0 only through the reused features / relations, not through its head."""
    model = seeded(name).eval()
    x = images(model.config)
    with torch.no_grad():
        base = model(x)
        model.exits[0].head.weight.normal_()
        same = model(x)
        model.exits[0].get_submodule(module).weight.normal_()
        changed = model(x)
    assert torch.equal(base[1], same[1]) and not torch.equal(base[0], same[0])
    assert not torch.equal(base[1], changed[1]) and not torch.equal(base[2], changed[2])


def test_relation_reuse_matches_reference_ops():
    """Our matmul resampling of relation maps equals the reference's upsample + adaptive pool."""
    model = seeded("dvt_tiny_t2t").eval()
    ex = model.exits[1]
    s, t = model.config.exits[0].grid, model.config.exits[1].grid
    L, H, Tp = model.config.depth, model.config.num_heads, s * s + 1
    prev = tuple(torch.randn(2, H, Tp, Tp) for _ in range(L))
    with torch.no_grad():
        ours = torch.cat(tuple(ex.reuse_relations(prev)), dim=1)  # eager inference: block by block
        r = ex.relation_reuse_conv(torch.cat(prev, dim=1))
    with torch.enable_grad():
        batched = torch.cat(ex.reuse_relations(prev), dim=1).detach()  # the batched (autograd, traced) form

    def pool(m):  # reference: nearest upsample to 2s, adaptive average pool to t
        return F.adaptive_avg_pool2d(F.interpolate(m, size=(2 * s, 2 * s), mode="nearest"), (t, t))

    B, C, n, _ = r.shape
    keys = pool(r[..., 1:].reshape(-1, n, s, s)).reshape(-1, n, t * t)
    r2 = torch.cat([r[..., 0].reshape(-1, n, 1), keys], dim=2).transpose(1, 2)  # (B*C, 1+t*t, n)
    queries = pool(r2[..., 1:].reshape(-1, t * t + 1, s, s)).reshape(-1, t * t + 1, t * t)
    ref = torch.cat([r2[..., :1], queries], dim=2).transpose(1, 2).reshape(B, C, t * t + 1, t * t + 1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched, ref, rtol=1e-5, atol=1e-6)


def test_feature_reuse_matches_reference_ops():
    model = seeded("dvt_tiny_t2t").eval()
    block = model.exits[2].blocks[0]
    s, t = model.config.exits[1].grid, model.config.exits[2].grid
    prev = torch.randn(2, s * s + 1, model.config.dim)
    with torch.no_grad():
        ours = block.context(prev)
        c = block.feature_reuse_mlp(prev)[:, 1:]
        grid = c.transpose(1, 2).reshape(2, -1, s, s)
        pooled = F.adaptive_avg_pool2d(F.interpolate(grid, size=(2 * s, 2 * s), mode="nearest"), (t, t))
        ref = torch.cat([torch.zeros(2, 1, c.shape[-1]), pooled.flatten(2).transpose(1, 2)], dim=1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("src,dst", [(7, 10), (10, 14), (2, 3), (3, 4), (4, 6), (5, 5), (3, 6)])
def test_grid_resample_matches_numpy_and_autograd_function(src, dst):
    x = torch.randn(2, 3, src, src, dtype=torch.float64)
    op = GridResample(src, dst).double()  # the constant is float32, then cast
    expected = resample_grid_np(x.numpy(), src, dst)
    np.testing.assert_allclose(op(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    a = torch.tensor(resample_matrix(src, dst), dtype=torch.float64)
    assert torch.equal(GridResampleFn.apply(x, a), op(x))  # the traced op computes the same


@pytest.mark.parametrize("src,dst", [(2, 3), (7, 10)])
def test_grid_resample_fn_gradient(src, dst):
    a = torch.tensor(resample_matrix(src, dst), dtype=torch.float64)
    x = torch.randn(1, 2, src, src, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: GridResampleFn.apply(v, a), (x,))


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit", "dvt_tiny_t2t_transformer"])
def test_exit_works_on_any_sub_batch(name):
    """Later adaptive inference runs exit k on the still-active samples only."""
    model = seeded(name).eval()
    x = images(model.config, batch=4)
    keep = torch.tensor([3, 1])
    with torch.no_grad():
        full = model.forward_exits(x)
        prev = full[0]
        ex = model.exits[1]
        sub = ex(x[keep], prev.features[keep] if ex.feature_reuse else None,
                 tuple(r[keep] for r in prev.relations) if ex.relation_reuse else None)
    torch.testing.assert_close(sub[0], full[1].logits[keep], rtol=1e-5, atol=1e-5)


def structurally_without_gradient(model) -> set:
    """The final exit's last block: its context MLP only feeds patch tokens, and the final exit's
    patch tokens reach no loss (the head reads the cls token, whose context slot is zero). Same in
    the reference code."""
    last = model.num_exits - 1, model.config.depth - 1
    return {n for n, _ in model.named_parameters()
            if n.startswith(f"exits.{last[0]}.blocks.{last[1]}.feature_reuse_mlp.")}


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit", "dvt_tiny_t2t_transformer"])
def test_gradients_reach_every_trainable_parameter(name):
    model = seeded(name).train()
    x, y = images(model.config, batch=4), torch.tensor([0, 1, 2, 3])
    loss = sum(F.cross_entropy(o, y) for o in model(x))
    loss.backward()
    dead = structurally_without_gradient(model)
    assert len(dead) == (6 if model.config.feature_reuse else 0)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            assert (p.grad.abs().sum() == 0) == (n in dead), n
        else:
            assert p.grad is None, n
            assert n.endswith(".w") or n.endswith("pos_embed"), n


def test_bf16_autocast_on_cpu():
    model = seeded("dvt_tiny_t2t").eval()
    x = images(model.config)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert all(torch.isfinite(o).all() for o in out)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.float(), b, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_in_other_dtypes(dtype):
    model = seeded("dvt_tiny_t2t").eval()
    x = images(model.config)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert all(o.dtype == dtype and torch.isfinite(o).all() for o in out)
    tol = 1e-5 if dtype == torch.float64 else 0.1
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol)


def test_seeded_construction_is_deterministic():
    a, b = seeded("dvt_tiny_t2t", seed=3), seeded("dvt_tiny_t2t", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_performer_w_is_scaled_orthogonal():
    w = seeded("dvt_tiny_t2t").exits[0].tokens_to_token.attention1.w
    m = w.shape[0]
    torch.testing.assert_close(w @ w.T, m * torch.eye(m), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 31, 32), (2, 3, 33, 33), (2, 1, 32, 32), (3, 32, 32), (2, 4, 32, 32)])
def test_bad_input_raises_value_error_with_expected_shape(shape):
    model = seeded("dvt_tiny_t2t")
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 32, 32\), got"):
        model(torch.randn(*shape))


def test_exit_rejects_missing_or_extra_reuse_inputs():
    model = seeded("dvt_tiny_t2t")
    x = images(model.config)
    with pytest.raises(ValueError, match="needs the previous exit's features"):
        model.exits[1](x)
    with pytest.raises(ValueError, match="does not reuse"):
        model.exits[0](x, prev_features=torch.zeros(2, 5, 64))


def test_config_overrides_and_unknown_fields():
    model = create_model("dvt_tiny_t2t", num_classes=5, drop_path_rate=0.2)
    assert model.config.num_classes == 5 and all(o.shape == (2, 5) for o in model(images(model.config)))
    with pytest.raises(common.ConfigError, match="unknown config field"):
        create_model("dvt_tiny_t2t", not_a_field=1)
