"""A batch of 0 images: both frameworks return empty outputs of the same shapes, from the forward, the
per-exit outputs and early exit (MindSpore in PYNATIVE and GRAPH mode), as torch does natively."""
import mindspore as ms
import numpy as np
import pytest
import torch

import ms_impl
import torch_impl

NAMES = ["dvt_tiny_t2t", "dvt_tiny_deit_2exit", "dvt_tiny_t2t_transformer"]


def _shapes(outputs) -> list:
    """Nested shapes of ExitOutputs / tuples of tensors (None kept)."""
    if outputs is None:
        return None
    if isinstance(outputs, (tuple, list)):
        return [_shapes(o) for o in outputs]
    return tuple(outputs.shape)


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_same_shapes_in_both_frameworks(pynative, name):
    tm = torch_impl.create_model(name).eval()
    mm = ms_impl.create_model(name)
    cfg = tm.config
    xt = torch.zeros(0, cfg.in_chans, cfg.img_size, cfg.img_size)
    xm = ms.Tensor(np.zeros((0, cfg.in_chans, cfg.img_size, cfg.img_size), np.float32))
    thresholds = [0.5] * (cfg.num_exits - 1)
    with torch.no_grad():
        t_logits, t_exits, t_res = tm(xt), tm.forward_exits(xt), tm.forward_adaptive(xt, thresholds)
    m_logits, m_exits, m_res = mm(xm), mm.forward_exits(xm), mm.forward_adaptive(xm, thresholds)
    assert _shapes(m_logits) == _shapes(t_logits) == [(0, cfg.num_classes)] * cfg.num_exits
    assert _shapes(m_exits) == _shapes(t_exits)
    assert [type(o).__name__ for o in m_exits] == ["ExitOutput"] * cfg.num_exits
    assert _shapes([m_res.logits, m_res.exit_index]) == _shapes([t_res.logits, t_res.exit_index])
    assert tuple(m_res.exit_counts) == tuple(t_res.exit_counts) == (0,) * cfg.num_exits
    assert m_res.exit_index.dtype == ms.int64 and t_res.exit_index.dtype == torch.int64
    with pytest.raises(ValueError, match="expected input of shape"):  # the shape is still checked
        mm(ms.Tensor(np.zeros((0, cfg.in_chans, cfg.img_size + 1, cfg.img_size), np.float32)))


def test_empty_batch_in_graph_mode(pynative):
    model = ms_impl.create_model("dvt_tiny_t2t")
    cfg = model.config
    ms.set_context(mode=ms.GRAPH_MODE)
    logits = model(ms.Tensor(np.zeros((0, cfg.in_chans, cfg.img_size, cfg.img_size), np.float32)))
    assert [tuple(lg.shape) for lg in logits] == [(0, cfg.num_classes)] * cfg.num_exits
    assert all(lg.dtype == ms.float32 for lg in logits)
