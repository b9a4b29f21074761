"""The MindSpore port's configs (`dvt_deit_small_msref*`, `dvt_tiny_msref`): the switches that make its math,
its FLOPs, and the "msref" layout of its checkpoints (DESIGN.md §3). Its logits: parity/test_parity_msref.py."""
import numpy as np
import pytest

from common import ConfigError, count_parameters, get_config, list_models
from common.flops import LN, cumulative_flops
from common.naming import NamingError, aliases, detect_naming, expected_shapes, layout, name_map, rename
from common.param_spec import parameter_specs
from common.resample import resample_flops, resample_matrix

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models: torch's second thread only adds contention on a busy 2-core machine."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


VARIANTS = ("dvt_deit_small_msref", "dvt_deit_small_msref_feature_reuse", "dvt_deit_small_msref_relation_reuse",
            "dvt_deit_small_msref_no_reuse")


def test_registered_with_the_ports_math():
    assert set(VARIANTS) | {"dvt_tiny_msref"} <= set(list_models())
    reuse = {name: (get_config(name).feature_reuse, get_config(name).relation_reuse) for name in VARIANTS}
    assert reuse == dict(zip(VARIANTS, [(True, True), (True, False), (False, True), (False, False)]))
    cfg = get_config("dvt_deit_small_msref")
    assert (cfg.grids, cfg.num_classes, cfg.norm_eps, cfg.gelu, cfg.reuse_resample, cfg.feature_reuse_norm,
            cfg.detach_reused_features) == ((7, 14), 1001, 1e-7, "tanh", "nearest", "discarded", True)
    assert [(e.tokenizer.kernel, e.tokenizer.stride, e.tokenizer.padding) for e in cfg.exits] == [(32, 32, 0),
                                                                                                 (16, 16, 0)]
    for field, bad in (("reuse_resample", "bilinear"), ("feature_reuse_norm", "kept"), ("detach_reused_features", 1)):
        with pytest.raises(ConfigError, match=field):
            cfg.replace(**{field: bad})


def test_nearest_resampling_is_torchs_nearest_and_x2_is_a_copy():
    import torch
    import torch.nn.functional as F
    for s, t in ((7, 14), (3, 4), (5, 7), (4, 4)):
        x = torch.randn(2, 3, s, s, dtype=torch.float64)
        a = torch.tensor(resample_matrix(s, t, np.float64, mode="nearest"))
        torch.testing.assert_close(a @ x @ a.T, F.interpolate(x, size=(t, t), mode="nearest"), rtol=0, atol=0)
    np.testing.assert_array_equal(resample_matrix(7, 14, mode="nearest"), resample_matrix(7, 14))
    assert (resample_flops(7, 14, "nearest"), resample_flops(7, 14)) == (196, 2 * 196)  # upsample only vs + pool


def test_flops_differ_from_the_reference_two_exit_cascade_exactly_where_the_math_does():
    """Against dvt_deit_small_2exit: one more class per head, no LayerNorm in the context MLPs (discarded),
    one nearest resize instead of upsample + pool for the context maps and both axes of the relations."""
    ours, ref = get_config("dvt_deit_small_msref"), get_config("dvt_deit_small_2exit")
    d, depth, c, tp, t = ours.dim, ours.depth, ours.relation_channels, 50, 197
    head = d  # 1001 vs 1000 classes, per exit
    norm = depth * LN * tp * d
    context = depth * ours.context_dim * (resample_flops(7, 14) - resample_flops(7, 14, "nearest"))
    relations = c * (tp + t) * (resample_flops(7, 14) - resample_flops(7, 14, "nearest"))
    got, want = cumulative_flops(ours), cumulative_flops(ref)
    assert got[0] - want[0] == head
    assert got[1] - want[1] == 2 * head - norm - context - relations
    assert count_parameters(ours) == count_parameters(ref) + 2 * (d + 1)


# ---- the "msref" layout ----------------------------------------------------------------------------------
def _random(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def test_layout_splits_qkv_reshapes_the_stem_and_renames_the_rest():
    cfg = get_config("dvt_tiny_msref")
    lay = layout(cfg, "msref")
    assert [p.name for p in lay["exits.1.blocks.1.attn.qkv.weight"]] == [
        f"normal_token.layers.1.attn.to_{c}.weight" for c in "qkv"]
    assert lay["exits.0.patch_embed.proj.weight"][0].shape == (16, 3 * 32 * 32)
    ms = dict(zip(name_map(cfg, "canonical"), (p[0].name for p in lay.values())))
    assert ms["exits.0.pos_embed"] == "less_token.pos_embedding"
    assert ms["exits.1.blocks.0.feature_reuse_mlp.0.weight"] == "normal_token.layers.0.feature_resuse_mlp.norm1.gamma"
    assert ms["exits.1.blocks.0.feature_reuse_mlp.1.fc2.bias"] == "normal_token.layers.0.feature_resuse_mlp.ff2.dense.bias"
    assert ms["exits.1.blocks.1.mlp.fc1.weight"] == "normal_token.layers.1.mlp.ff1.dense.weight"
    assert ms["exits.1.blocks.1.attn.proj.weight"] == "normal_token.layers.1.attn.to_out.weight"
    assert ms["exits.0.head.bias"] == "less_token.head.0.bias"
    assert ms["exits.1.norm.weight"] == "normal_token.norm.gamma"
    assert ms["exits.1.relation_reuse_conv.2.weight"] == "normal_token.relation_reuse_conv.2.weight"
    assert sum(int(np.prod(s)) for s in expected_shapes(cfg, "msref").values()) == count_parameters(cfg)
    with pytest.raises(NamingError, match="use common.naming.layout"):
        name_map(cfg, "msref")


def test_round_trips_are_bit_exact_and_the_layouts_are_the_ports_math():
    import torch
    import torch.nn.functional as F
    cfg = get_config("dvt_tiny_msref")
    port = _random(expected_shapes(cfg, "msref"))
    canonical = rename(port, cfg, "msref", "canonical")
    assert list(canonical) == [s.name for s in parameter_specs(cfg)]
    back = rename(rename(canonical, cfg, "canonical", "mindspore"), cfg, "mindspore", "msref")
    assert back.keys() == port.keys() and all(np.array_equal(back[k], port[k]) for k in port)
    qkv = canonical["exits.0.blocks.0.attn.qkv.weight"]
    np.testing.assert_array_equal(qkv[16:32], port["less_token.layers.0.attn.to_k.weight"])
    # The port's stem: (B, C, H/p, p, W/p, p) -> (B, H/p, W/p, C, p, p) -> Dense; ours: Conv2d(kernel = stride = p).
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    dense_w = torch.from_numpy(port["less_token.stem.patch_to_embedding.dense.weight"]).double()
    bias = torch.from_numpy(port["less_token.stem.patch_to_embedding.dense.bias"]).double()
    patches = x.reshape(1, 3, 7, 32, 7, 32).permute(0, 2, 4, 1, 3, 5).reshape(1, 49, 3 * 32 * 32)
    conv = F.conv2d(x, torch.from_numpy(canonical["exits.0.patch_embed.proj.weight"]).double(), bias, stride=32)
    torch.testing.assert_close(conv.flatten(2).transpose(1, 2), F.linear(patches, dense_w, bias),
                               rtol=1e-12, atol=1e-12)


def test_detection_aliases_and_which_configs_the_layout_holds():
    cfg = get_config("dvt_tiny_msref")
    port = _random(expected_shapes(cfg, "msref"))
    assert detect_naming(port, cfg) == "msref"
    old = {("less_token.cls" if k == "less_token.cls_token" else k): v for k, v in port.items()}  # MindSpore 1.5
    assert aliases(cfg, "msref")["less_token.cls"] == "less_token.cls_token"
    got = rename(old, cfg, "msref", "canonical")
    np.testing.assert_array_equal(got["exits.0.cls_token"], port["less_token.cls_token"])
    both = dict(old, **{"less_token.cls_token": port["less_token.cls_token"]})  # both spellings: one is extra
    assert "less_token.cls" in rename(both, cfg, "msref", "canonical")
    for name in ("dvt_deit_small", "dvt_tiny_t2t", "deit_small"):  # 3 exits; T2T; one exit
        with pytest.raises(NamingError, match="msref"):
            layout(get_config(name), "msref")
    padded = get_config("dvt_tiny_deit")
    with pytest.raises(NamingError, match="kernel"):
        layout(padded.replace(exits=padded.exits[1:]), "msref")  # 3x3 -> 4x4; the 3x3 patch embedding pads


# ---- the model switches, in both frameworks ----------------------------------------------------------------
def test_torch_stop_gradient_on_features_and_the_discarded_norm():
    """Exit 1's logits reach exit 0's last MLP only through the reused features (cut), its attention through
    the relations (kept); the context MLP's LayerNorm does not change the output and has no gradient."""
    import torch
    import torch_impl
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    grads = {}
    for detach in (True, False):
        model = torch_impl.create_model("dvt_tiny_msref", detach_reused_features=detach).eval()
        model(x)[1].sum().backward()
        last = model.exits[0].blocks[-1]
        grads[detach] = (last.mlp.fc2.weight.grad, last.attn.qkv.weight.grad)
    assert grads[True][0] is None or not grads[True][0].any()
    assert grads[False][0].abs().sum() > 0 and grads[True][1].abs().sum() > 0
    norm = model.exits[1].blocks[0].feature_reuse_mlp[0]
    assert not norm.weight.requires_grad and norm.weight.grad is None
    with torch.no_grad():
        before = model(x)[1]
        norm.weight.mul_(3.0).add_(1.0)
        assert torch.equal(model(x)[1], before)


def test_mindspore_stop_gradient_on_features_and_the_discarded_norm():
    import mindspore as ms
    import ms_impl
    ms.set_seed(0)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    for detach in (True, False):
        net = ms_impl.create_model("dvt_tiny_msref", detach_reused_features=detach)
        last = net.exits[0].blocks[-1]
        weights = [last.mlp.fc2.weight, last.attn.qkv.weight]
        g_mlp, g_attn = ms.grad(lambda inp: net(inp)[1].sum(), grad_position=None, weights=weights)(x)
        assert (float(np.abs(g_mlp.asnumpy()).sum()) == 0.0) == detach
        assert float(np.abs(g_attn.asnumpy()).sum()) > 0
    frozen = {p.name for p in net.get_parameters() if not p.requires_grad}
    assert frozen == {f"exits.1.blocks.{i}.feature_reuse_mlp.0.{leaf}" for i in range(2) for leaf in ("gamma", "beta")}
