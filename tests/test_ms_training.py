"""A training step reaches every trainable parameter; frozen ones (Performer w, sinusoid table) stay put."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from common import get_config, name_map, parameter_specs
from ms_impl import create_model


@pytest.fixture(autouse=True)
def _pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)


def batch(cfg, n=4):
    rng = np.random.RandomState(0)
    x = ms.Tensor(rng.randn(n, cfg.in_chans, cfg.img_size, cfg.img_size).astype(np.float32))
    y = ms.Tensor(rng.randint(0, cfg.num_classes, n).astype(np.int32))
    return x, y


def cascade_loss(net, exits=None):
    """Sum of the per-exit cross-entropies (the DVT training objective), optionally of some exits only."""
    ce = nn.CrossEntropyLoss()

    def loss_fn(x, y):
        outs = net(x)
        chosen = range(len(outs)) if exits is None else exits
        loss = 0.0
        for k in chosen:
            loss = loss + ce(outs[k], y)
        return loss

    return loss_fn


def structurally_without_gradient(cfg) -> set:
    """The final exit's last block: its context MLP only feeds patch tokens, and the final exit's patch
    tokens reach no loss (the head reads the cls token, whose context slot is zero). Same in the
    reference code and in torch_impl."""
    prefix = f"exits.{cfg.num_exits - 1}.blocks.{cfg.depth - 1}.feature_reuse_mlp."
    return {ms_name for ms_name in name_map(cfg, "mindspore").values() if ms_name.startswith(prefix)}


@pytest.mark.parametrize("name, overrides", [
    ("dvt_tiny_t2t", {}),
    ("dvt_tiny_deit", dict(drop_path_rate=0.1, drop_rate=0.1, attn_drop_rate=0.1)),  # every dropout path
])
def test_training_step_updates_trainable_and_keeps_frozen(name, overrides):
    cfg = get_config(name, **overrides)
    net = create_model(name, **overrides)
    net.set_train(True)  # Performer / block dropouts and DropPath on
    x, y = batch(cfg)
    trainable = net.trainable_params()
    frozen = [p for p in net.get_parameters() if not p.requires_grad]
    ms_names = name_map(cfg, "mindspore")
    assert {p.name for p in frozen} == {ms_names[s.name] for s in parameter_specs(cfg) if not s.trainable}
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}

    grad_fn = ms.value_and_grad(cascade_loss(net), None, trainable)
    loss, grads = grad_fn(x, y)
    assert np.isfinite(float(loss))
    dead = structurally_without_gradient(cfg)
    assert len(dead) == (6 if cfg.feature_reuse else 0)
    no_grad = {p.name for p, g in zip(trainable, grads) if not np.abs(g.asnumpy()).max() > 0}
    assert no_grad == dead
    assert all(np.isfinite(g.asnumpy()).all() for g in grads)

    lr = 0.1
    nn.SGD(trainable, learning_rate=lr)(grads)
    step = {p.name: g.asnumpy() for p, g in zip(trainable, grads)}
    for p in net.get_parameters():
        if p.requires_grad:
            np.testing.assert_allclose(p.asnumpy(), before[p.name] - lr * step[p.name], rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(p.asnumpy(), before[p.name], err_msg=p.name)


def test_no_stop_gradient_between_exits():
    """As in the reference, the last exit's loss trains earlier exits through both reuse paths."""
    cfg = get_config("dvt_tiny_t2t")
    net = create_model("dvt_tiny_t2t")
    x, y = batch(cfg, 2)
    watched = [p for p in net.trainable_params() if p.name.startswith("exits.0.blocks.")]
    _, grads = ms.value_and_grad(cascade_loss(net, exits=[2]), None, watched)(x, y)
    assert all(np.abs(g.asnumpy()).max() > 0 for g in grads)


def test_compiled_training_step():
    """value_and_grad + optimizer under `mindspore.jit` (GRAPH): the loss falls, frozen values stay."""
    cfg = get_config("dvt_tiny_t2t_relation_reuse", depth=1, drop_path_rate=0.1)
    net = create_model("dvt_tiny_t2t_relation_reuse", depth=1, drop_path_rate=0.1)
    net.set_train(True)
    params = net.trainable_params()
    frozen = {p.name: p.asnumpy().copy() for p in net.get_parameters() if not p.requires_grad}
    opt = nn.SGD(params, learning_rate=0.1)
    grad_fn = ms.value_and_grad(cascade_loss(net), None, params)

    @ms.jit
    def step(x, y):
        loss, grads = grad_fn(x, y)
        opt(grads)
        return loss

    x, y = batch(cfg)
    losses = [float(step(x, y)) for _ in range(3)]
    assert losses[2] < losses[0]
    for p in net.get_parameters():
        if not p.requires_grad:
            np.testing.assert_array_equal(p.asnumpy(), frozen[p.name])
