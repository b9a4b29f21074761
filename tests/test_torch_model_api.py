"""timm's model API on every registered model, following timm's own `tests/test_models.py` where it applies.

What timm checks and how it maps onto a cascade (whose `forward` returns one logits tensor per exit):
- default cfg / classifier reset / `num_classes=0` / factory arguments: every registered model, full size
  on the meta device (shapes only), as timm does;
- backward (every parameter gets a gradient) and the per-exit forward checks of the default-cfg test: every
  tiny config (T2T Performer and transformer token layers, DeiT patches, 1 to 4 exits, each reuse
  ablation); features (`features_only=True`), intermediates, grad checkpointing and FX (forward and
  backward): one tiny config of each kind of exit. Full-size models are too slow for these on CPU, as
  timm caps its sizes;
- not applicable to a cascade, with the reason: timm's `test_model_forward` and its standard default-cfg
  test read one output tensor (a cascade returns K); TorchScript is not supported (optional).
"""
import fnmatch

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._features import feature_take_indices
from timm.models._manipulate import adapt_input_conv, group_parameters
from timm.optim import create_optimizer_v2
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import common
import torch_impl  # noqa: F401  (registers the models in timm)
from common.exits import per_exit
from common.features import reduction, take_indices
from common.input_channels import adapt_channels
from torch_impl.checkpoint import named_state_dict

ALL = common.list_models()
TINY = common.list_models(tiny=True)
# One tiny config per kind of exit: T2T Performer and transformer token layers, DeiT patches, one exit.
KINDS = ["dvt_tiny_t2t", "dvt_tiny_t2t_transformer", "dvt_tiny_deit_2exit", "t2t_vit_tiny"]
FAST = ["dvt_tiny_deit_2exit", "t2t_vit_tiny"]  # the cheapest cascade and the single-exit T2T


def seeded(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def images(cfg, batch=2, seed=1, chans=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, chans or cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)


def grids(model):
    return [e.grid for e in model.exits]


# ---- default cfg, classifier, factory: every model, full size on the meta device (no forward) ---------------
@pytest.mark.parametrize("name", ALL)
def test_default_cfg_classifier_and_optimizer_contract(name):
    """timm's default-cfg checks that need no forward (the per-exit shapes of full-size forwards are checked
    on the meta device by test_torch_models.py), and what timm's optimizer factory relies on."""
    model = timm.create_model(name, device="meta", dtype=torch.float32)
    cfg, dcfg, k = model.config, model.default_cfg, model.config.num_exits
    assert model.num_features == model.head_hidden_size == cfg.dim and model.num_classes == cfg.num_classes
    assert model.in_chans == dcfg["input_size"][0] == cfg.in_chans
    state = model.state_dict()
    for names in (dcfg["classifier"], dcfg["first_conv"]):  # str for one exit, one per exit for a cascade
        names = (names,) if isinstance(names, str) else names
        assert len(names) == k and all(f"{n}.weight" in state for n in names)
    assert [i["module"] for i in model.feature_info] == [f"exits.{k - 1}.blocks.{i}" for i in range(cfg.depth)]
    misplaced = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    assert not misplaced
    params = [n for n, _ in model.named_parameters()]
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert set(groups) == set(params)
    assert sorted(set(groups.values())) == list(range(cfg.depth + 2))  # stem, blocks (+ final norms), heads
    assert all(groups[n] == int(n.split(".blocks.")[1].split(".")[0]) + 1 for n in params if ".blocks." in n)
    assert all(any(fnmatch.fnmatch(n, pat) for n in params) for pat in model.no_weight_decay())
    # reset keeps the device, dtype and train/eval mode; frozen stays frozen; num_classes=0 stores no head
    model.to(dtype=torch.float64).train()
    model.reset_classifier(0)
    model.reset_classifier(2)
    heads = per_exit(model.get_classifier())
    assert len(heads) == k and all(h.weight.dtype == torch.float64 and h.weight.is_meta and h.training
                                   for h in heads)
    assert model.num_classes == 2 == model.config.num_classes
    model.requires_grad_(False)
    model.reset_classifier(0, "")
    assert not [n for n, p in model.named_parameters() if p.requires_grad]
    headless = timm.create_model(name, num_classes=0, global_pool="avg", device="meta")
    assert headless.global_pool == "avg" and not any("head" in n for n in headless.state_dict())
    with pytest.raises(TypeError, match="not_a_model_arg"):
        timm.create_model(name, device="meta", not_a_model_arg=1)


@pytest.mark.parametrize("name", KINDS)
def test_forward_features_head_and_classifier_reset(name):
    """timm's default-cfg forward checks, per exit: features, pre-logits, reset_classifier(0) / (0, ''),
    and num_classes=0 at creation giving the pre-logits."""
    model = seeded(name).eval()
    cfg, k, d = model.config, model.config.num_exits, model.config.dim
    x = images(cfg)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model(x)
        assert isinstance(logits, tuple if k > 1 else torch.Tensor)
        assert [tuple(f.shape) for f in per_exit(feats)] == [(2, 1 + g * g, d) for g in grids(model)]
        for p, f, lg, exit_ in zip(per_exit(pre), per_exit(feats), per_exit(logits), model.exits):
            torch.testing.assert_close(p, f[:, 0])
            torch.testing.assert_close(lg, exit_.head(p))
        model.reset_classifier(0)
        for a, b in zip(per_exit(model(x)), per_exit(pre)):
            torch.testing.assert_close(a, b)
        model.reset_classifier(0, "")
        for a, b in zip(per_exit(model(x)), per_exit(feats)):
            torch.testing.assert_close(a, b)
        headless = seeded(name, num_classes=0).eval()
        assert [tuple(o.shape) for o in per_exit(headless(x))] == [(2, d)] * k


def test_layer_decay_groups_per_exit_and_block():
    """create_optimizer_v2(layer_decay=0.65): one lr scale per depth, shared by the exits, every exit in it."""
    model = timm.create_model("dvt_tiny_digits")  # 3 exits, depth 4
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    names = {id(p): n for n, p in model.named_parameters()}
    scales = {}
    for group in opt.param_groups:
        for p in group["params"]:
            scales[names[id(p)]] = group["lr_scale"]
    assert len(scales) == len(names)
    depth = model.config.depth
    for n, scale in scales.items():
        if ".blocks." in n:
            layer = int(n.split(".blocks.")[1].split(".")[0]) + 1
        elif n.split(".", 2)[2].startswith(("cls_token", "pos_embed", "tokens_to_token", "patch_embed",
                                            "relation_reuse_conv")):
            layer = 0
        else:  # the final norm joins the last block (timm's ViT), the head comes last
            layer = depth if ".norm." in n else depth + 1
        assert scale == pytest.approx(0.65 ** (depth + 1 - layer)), n
    for layer_scale in {round(s, 12) for s in scales.values()}:  # every depth holds parameters of every exit
        exits = {n.split(".")[1] for n, s in scales.items() if round(s, 12) == layer_scale}
        assert exits == {"0", "1", "2"}


def test_take_indices_is_timms_rule():
    for args in [(12, None), (12, 3), (12, [0, 5, -1]), (4, (-4, -1)), (2, 2)]:
        assert take_indices(*args) == feature_take_indices(*args)
    with pytest.raises(ValueError, match="out of range"):
        take_indices(4, [4])


def test_channel_rule_is_timms_adapt_input_conv():
    w = torch.randn(8, 3, 5, 5)
    for chans in (1, 2, 4, 7):
        np.testing.assert_allclose(adapt_channels(w.numpy(), chans), adapt_input_conv(chans, w).numpy(),
                                   rtol=1e-6, atol=1e-6)


# ---- backward: every parameter gets a gradient (tiny configs) ---------------------------------------------
@pytest.mark.parametrize("name", [n for n in TINY if n != "dvt_tiny_digits"])  # digits: dvt_tiny_t2t, deeper
def test_backward_every_parameter_gets_a_gradient(name):
    model = seeded(name, num_classes=7).train()
    outputs = torch.cat(per_exit(model(images(model.config))))
    outputs.mean().backward()
    assert outputs.shape == (2 * model.config.num_exits, 7) and torch.isfinite(outputs).all()
    # Every parameter gets a gradient; the MindSpore port's discarded context LayerNorm (DESIGN.md §3) feeds
    # nothing, so it is held as buffers, not parameters.
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())
    if model.config.feature_reuse_norm == "discarded":
        assert len([n for n, _ in model.named_buffers() if ".feature_reuse_mlp.0." in n]) == 4


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "t2t_vit_tiny"])
def test_grad_checkpointing_same_outputs_and_gradients(name):
    """Every block of every exit is recomputed in backward: same loss and gradients, dropout included."""
    cfg_kw = dict(drop_path_rate=0.1)
    x, y = images(common.get_config(name), batch=3), torch.tensor([0, 1, 2])
    results = []
    for enable in (False, True):
        model = seeded(name, **cfg_kw).train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(5)
        loss = sum(F.cross_entropy(o, y) for o in per_exit(model(x)))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6)
    model.eval()
    assert all(e.grad_checkpointing for e in model.exits)


# ---- features and intermediates --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dvt_tiny_digits", "dvt_tiny_deit_4exit"])
def test_features_only_uses_the_last_exit(name):
    model = seeded(name, features_only=True).eval()
    cfg = model.model.config
    depth, grid = cfg.depth, cfg.exits[-1].grid
    info, n = model.feature_info, min(3, depth)  # timm's ViT default: the last three blocks
    assert info.channels() == [cfg.dim] * n and info.reduction() == [reduction(cfg.img_size, grid)] * n
    assert info.module_name() == [f"exits.{cfg.num_exits - 1}.blocks.{i}" for i in range(depth - n, depth)]
    with torch.no_grad():
        outs = model(images(cfg))
    assert [tuple(o.shape) for o in outs] == [(2, cfg.dim, grid, grid)] * n


@pytest.mark.parametrize("name", FAST)
def test_forward_intermediates_contract(name):
    model = seeded(name).eval()
    cfg = model.config
    x = images(cfg)
    k, d, depth = cfg.num_exits, cfg.dim, cfg.depth
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
        for got, want in zip(per_exit(final), per_exit(feats)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)  # timm: output == forward_features
        g = cfg.exits[-1].grid
        assert [tuple(t.shape) for t in inter] == [(2, d, g, g)] * depth
        nlc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", norm=True, intermediates_only=True)
        assert [tuple(t.shape) for t in nlc] == [(2, g * g, d)] * 2
        exit_ = model.exits[-1]
        torch.testing.assert_close(nlc[1], exit_.norm(inter[-1].flatten(2).transpose(1, 2)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(nlc[1], per_exit(feats)[-1][:, 1:], rtol=1e-5, atol=1e-6)
        with_cls = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, intermediates_only=True)
        assert tuple(with_cls[0][1].shape) == (2, 1, d)
        early_final, early = model.forward_intermediates(x, indices=[0], stop_early=True, exit_index=0)
        assert tuple(early[0].shape) == (2, d, cfg.exits[0].grid, cfg.exits[0].grid)
        torch.testing.assert_close(early[0], model.forward_intermediates(x, indices=[0], exit_index=0)[1][0])
        assert tuple(per_exit(early_final)[0].shape) == (2, 1 + cfg.exits[0].num_patches, d)
        model.set_grad_checkpointing()  # no effect without gradients, and none on the values
        torch.testing.assert_close(model.forward_intermediates(x)[1][-1], inter[-1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="exit_index"):
        model.forward_intermediates(x, exit_index=k)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_global_pool_choices():
    model = seeded("dvt_tiny_deit_2exit").eval()
    x = images(model.config)
    for pool in ("avg", "max", "avgmax", "token"):
        model.reset_classifier(10, pool)
        with torch.no_grad():
            feats = model.forward_features(x)
            pre = model.forward_head(feats, pre_logits=True)
            logits = model(x)
        for f, p, lg, exit_ in zip(feats, pre, logits, model.exits):
            want = {"token": f[:, 0], "avg": f[:, 1:].mean(1), "max": f[:, 1:].amax(1),
                    "avgmax": 0.5 * (f[:, 1:].mean(1) + f[:, 1:].amax(1))}[pool]
            torch.testing.assert_close(p, want)
            torch.testing.assert_close(lg, exit_.head(want))
    assert timm.create_model("dvt_tiny_deit", global_pool="avg").global_pool == "avg"
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "map")


# ---- FX (timm's feature extraction tracer), forward and backward ---------------------------------------------
def fx_model(model, train=False):
    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                  param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    heads = [n for n in (train_nodes if train else eval_nodes) if n.endswith(".head")]
    assert len(heads) == model.num_exits
    return create_feature_extractor(model, train_return_nodes=heads, eval_return_nodes=heads, tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", ["dvt_tiny_t2t"] + FAST)
def test_fx_forward_and_backward(name):
    """torch.fx through timm's tracer settings, every exit's head as an output (timm's own FX test keeps one
    output node in eval mode, which cannot hold a cascade's K logits). The feature extractor drops the input
    shape check (dead code to FX: it returns nothing)."""
    model = seeded(name, num_classes=5)
    x = images(model.config)
    with torch.inference_mode():
        ref = torch.cat(per_exit(model.eval()(x)))
        got = torch.cat(tuple(fx_model(model)(x).values()))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    traced = fx_model(model.train(), train=True)
    out = torch.cat(tuple(traced(x).values()))
    out.mean().backward()
    assert out.shape == (2 * model.num_exits, 5)
    assert all(p.grad is not None for p in traced.parameters())


# ---- in_chans adaptation with pretrained weights ------------------------------------------------------------
@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit_2exit"])
def test_pretrained_in_chans_adapts_every_exit_first_layer(tmp_path, name):
    """A gray image through the adapted 1-channel model = the RGB model on that image repeated 3 times."""
    src = seeded(name).eval()
    path = tmp_path / "ref.pth"
    torch.save({"model_state_dict": named_state_dict(src, "reference")}, path)
    gray = timm.create_model(name, pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert gray.in_chans == 1 and gray.config.in_chans == 1
    x1 = images(src.config, chans=1)
    with torch.no_grad():
        want, got = per_exit(src(x1.expand(-1, 3, -1, -1))), per_exit(gray(x1))
    for a, b in zip(got, want):  # exact: T2T Performer (its kqv bias absorbs the LayerNorm) and DeiT convs
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    four = timm.create_model(name, pretrained=True, in_chans=4, num_classes=3,
                             pretrained_cfg_overlay=dict(file=str(path)))
    assert [tuple(o.shape) for o in per_exit(four(images(src.config, chans=4)))] == [(2, 3)] * src.num_exits
