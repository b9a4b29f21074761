"""Mixed-precision policy (ms_impl/amp.py): which cells it marks, that a converted model runs, and that
the float32 islands stay float32. CPU has float16 kernels for every op DVT uses, so float16 runs here;
bfloat16 runs only where the kernels exist (Ascend/GPU) and is skipped otherwise."""
import mindspore as ms
import mindspore.common.dtype as mstype
import numpy as np
import pytest
from mindspore import nn

from common import get_config
from common.exits import per_exit
from ms_impl import apply_amp, create_model
from ms_impl.amp import precision_plan
from ms_impl.models import AttentionLogits, RandomFeatureAttention, TokenPerformer

NAME = "dvt_tiny_t2t"  # Performer token layers and both reuses: every island is present
SMALL = dict(depth=1)  # one block per exit keeps the PYNATIVE float16 runs short


@pytest.fixture(autouse=True)
def _pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


def images(cfg, batch=2):
    return ms.Tensor(np.random.RandomState(0).randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
                     .astype(np.float32))


def test_o1_plan_lowers_dense_and_conv_and_pins_the_float32_list():
    net = create_model(NAME)
    plan = precision_plan(net, "O1")
    cells = dict(net.cells_and_names())
    low = {n for n, p in plan.items() if p == "low"}
    fp32 = {n for n, p in plan.items() if p == "fp32"}
    heads = {n for n in cells if n.endswith(".head")}
    assert low == {n for n, c in cells.items() if isinstance(c, (nn.Dense, nn.Conv2d))} - heads
    assert any(isinstance(cells[n], nn.Conv2d) for n in low)  # relation-reuse 1x1 convs
    want_fp32 = {n for n, c in cells.items()
                 if isinstance(c, (nn.LayerNorm, AttentionLogits, RandomFeatureAttention, TokenPerformer))}
    assert fp32 == want_fp32 | heads
    assert {"exits.0.blocks.0.attn.attn_logits", "exits.0.tokens_to_token.attention1.random_feature_attn",
            "exits.2.head"} <= fp32
    o2 = precision_plan(net, "O2")
    assert {n for n, p in o2.items() if p == "fp32"} == fp32 and set(o2) == set(cells) - {""}
    assert precision_plan(net, "O0") == {}
    with pytest.raises(ValueError, match="level"):
        precision_plan(net, "O3")


@pytest.mark.parametrize("level", ["O1", "O2", "auto"])
def test_float16_forward_runs_and_stays_close(level):
    cfg = get_config(NAME, **SMALL)
    net = create_model(NAME, **SMALL)
    x = images(cfg)
    ref = [o.asnumpy() for o in net(x)]
    names = [n for n, _ in net.parameters_and_names()]
    amp = apply_amp(net, level, mstype.float16)
    assert [n for n, _ in amp.parameters_and_names()] == names  # nothing wrapped or renamed
    out = amp(x)
    for o, r in zip(out, ref):
        assert o.dtype == ms.float32  # heads run in float32
        assert np.isfinite(o.asnumpy()).all()
        np.testing.assert_allclose(o.asnumpy(), r, atol=5e-3)
    if level != "auto":  # 'auto' decorates construct only; forward_exits runs unconverted
        inter = net.forward_exits(x)
        for o in inter:
            assert all(r.dtype == ms.float32 for r in o.relations)  # attention logits stay float32
            assert o.features.dtype == (ms.float32 if level == "O1" else o.features.dtype)


def test_switching_back_to_o0_restores_float32_exactly():
    cfg = get_config(NAME, **SMALL)
    net = create_model(NAME, **SMALL)
    x = images(cfg)
    ref = [o.asnumpy() for o in net(x)]
    apply_amp(net, "O2")
    apply_amp(net, "O1")
    assert any(not np.array_equal(o.asnumpy(), r) for o, r in zip(net(x), ref))
    apply_amp(net, "O0")
    for o, r in zip(net(x), ref):
        np.testing.assert_array_equal(o.asnumpy(), r)


def test_auto_level_cannot_be_stacked():
    net = create_model("t2t_vit_tiny")
    apply_amp(net, "O1")
    with pytest.raises(ValueError, match="auto"):
        apply_amp(net, "auto")
    fresh = apply_amp(create_model("t2t_vit_tiny"), "auto")
    with pytest.raises(ValueError, match="cannot be undone"):
        apply_amp(fresh, "O0")
    with pytest.raises(ValueError, match="float16 or .*bfloat16"):
        apply_amp(create_model("t2t_vit_tiny"), "O1", mstype.float32)


def test_o1_in_graph_mode_and_switching_recompiles():
    cfg = get_config("t2t_vit_tiny")
    net = create_model("t2t_vit_tiny")
    x = images(cfg)
    ms.set_context(mode=ms.GRAPH_MODE)
    ref = net(x).asnumpy()  # a single-exit model: one tensor
    apply_amp(net, "O1")
    low = net(x)
    assert low.dtype == ms.float32
    assert not np.array_equal(low.asnumpy(), ref)  # recompiled with the new precision
    np.testing.assert_allclose(low.asnumpy(), ref, atol=5e-3)
    apply_amp(net, "O0")
    np.testing.assert_array_equal(net(x).asnumpy(), ref)


def test_bfloat16_where_the_backend_has_kernels():
    # Probe with a bare op: a cell flagged by to_float that raises in PYNATIVE leaves the executor's
    # mixed-precision type set (MindSpore 2.10), which would leak into later tests.
    ones = ms.Tensor(np.ones((2, 2), np.float32)).astype(mstype.bfloat16)
    try:
        ms.ops.matmul(ones, ones).asnumpy()
    except (RuntimeError, TypeError, ValueError) as err:
        pytest.skip(f"no bfloat16 MatMul kernel on this backend ({ms.get_context('device_target')}): "
                    f"{str(err).splitlines()[0]}")
    cfg = get_config("t2t_vit_tiny")
    net = apply_amp(create_model("t2t_vit_tiny"), "O1", "bfloat16")
    assert all(np.isfinite(o.asnumpy()).all() for o in per_exit(net(images(cfg))))


def test_a_failed_low_precision_run_leaves_no_precision_behind():
    """MindSpore keeps PYNATIVE's current precision in the process and does not reset it when a low-precision
    cell raises; ms_impl.stages resets it (ms_impl.amp.reset_pynative_precision), so later models run float32."""
    from ms_impl import stages
    cfg = get_config(NAME)
    fresh = create_model(NAME, **SMALL)
    x = images(cfg)
    before = [lg.asnumpy() for lg in per_exit(fresh(x))]
    net = create_model(NAME, **SMALL)
    try:  # raises on a CPU (no bfloat16 MatMul kernel); runs where the kernels exist
        stages.run_logits(net, x.asnumpy(), "O1-bf16")
    except (TypeError, RuntimeError, ValueError):
        pass
    after = [lg.asnumpy() for lg in per_exit(fresh(x))]
    assert all(a.dtype == np.float32 for a in after)
    assert all(np.array_equal(a, b) for a, b in zip(after, before))
