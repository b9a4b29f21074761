"""GRAPH mode (set_context and mindspore.jit) gives the same logits as PYNATIVE.

GRAPH compilation costs seconds per model on CPU, so a few tiny configs cover the code paths (T2T
Performer with both reuses, T2T Transformer token layers, a DeiT four-exit cascade, two batch sizes
under `mindspore.jit`), and one reference model runs once at batch 1.
"""
import time

import mindspore as ms
import numpy as np
import pytest

from common import get_config
from ms_impl import create_model


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


def images(cfg, batch, seed=0):
    rng = np.random.RandomState(seed)
    return ms.Tensor(rng.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size).astype(np.float32))


def max_diff(a, b):
    return max(float(np.abs(x.asnumpy() - y.asnumpy()).max()) for x, y in zip(a, b))


def graph_vs_pynative(name, batches):
    cfg = get_config(name)
    net = create_model(name)
    xs = [images(cfg, b, seed=b) for b in batches]
    eager = [net(x) for x in xs]
    ms.set_context(mode=ms.GRAPH_MODE)
    start = time.perf_counter()
    graph = [net(x) for x in xs]  # one compile per input shape
    compile_s = time.perf_counter() - start
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for e, g in zip(eager, graph):
        assert isinstance(g, tuple) and len(g) == cfg.num_exits
        assert max_diff(e, g) <= 1e-6
    return compile_s


@pytest.mark.parametrize("name, batches", [
    ("dvt_tiny_t2t", (2,)),
    ("dvt_tiny_t2t_transformer", (2,)),
    ("dvt_tiny_deit_4exit", (1,)),
])
def test_graph_mode_matches_pynative(pynative, name, batches):
    graph_vs_pynative(name, batches)


def test_jit_function_matches_pynative_at_any_batch_size(pynative):
    """`mindspore.jit` on a function; two batch sizes (one compile each): nothing is sized to the batch."""
    cfg = get_config("dvt_tiny_deit_2exit")
    net = create_model("dvt_tiny_deit_2exit")

    @ms.jit
    def forward(inp):
        return net(inp)

    for b in (1, 3):
        x = images(cfg, b, seed=b)
        assert max_diff(net(x), forward(x)) <= 1e-6


def test_graph_mode_rejects_bad_input_with_the_expected_shape(pynative):
    net = create_model("t2t_vit_tiny")
    ms.set_context(mode=ms.GRAPH_MODE)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 32, 32\), got \(2, 1, 32, 32\)"):
        net(ms.Tensor(np.zeros((2, 1, 32, 32), np.float32)))


@pytest.mark.slow
def test_reference_model_graph_matches_pynative_at_batch_1(pynative):
    """Full-size DVT T2T-ViT-12 (7 -> 10 -> 14 tokens, both reuses) once, batch 1."""
    compile_s = graph_vs_pynative("dvt_t2t_vit_12", (1,))
    print(f"GRAPH compile + first run of dvt_t2t_vit_12 at batch 1: {compile_s:.1f}s")
