"""Real early exit in ms_impl (`adaptive_forward`) equals "full cascade + offline exit rule", in PYNATIVE
and GRAPH mode.

Same checks as tests/test_torch_adaptive.py (exit indices equal to the offline rule on the full cascade's
logits; logits equal within 1e-5, measured <= 1.2e-7 on the tiny configs), with thresholds at least 1e-6
away from every confidence so that rounding cannot flip a decision. GRAPH mode compiles each exit once
with a dynamic batch axis (several seconds per exit on CPU), so it runs on one tiny config, with two
batch sizes and every kind of stage (all leave, some leave, none leave, empty). MindSpore PYNATIVE is
slow on CPU, so the PYNATIVE sweep is shorter than torch's (the feature/relation ablations run the same
code paths as the full-reuse configs).
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from common.adaptive import counts_for_fractions, exit_counts, offline_exits, scores, thresholds_for_fractions
from common.exits import per_exit
from ms_impl import create_model
from ms_impl.models import adaptive_forward
from ms_impl.models.adaptive import _STAGES
from ms_impl.models.attention import Attention

ATOL = 1e-5
MIN_MARGIN = 1e-6


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


def images(cfg, batch: int, seed: int = 0) -> Tensor:
    x = np.random.RandomState(seed).randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    return Tensor(x.astype(np.float32))


def full_cascade(model, x) -> np.ndarray:
    return np.stack([lg.asnumpy() for lg in per_exit(model(x))])


def threshold_sets(full: np.ndarray, fraction_sets) -> list:
    s = np.stack([scores(lg) for lg in full])
    out = []
    for fractions in fraction_sets:
        thresholds, counts, margin = thresholds_for_fractions(s, fractions)
        assert margin >= MIN_MARGIN, f"test thresholds too close to a confidence ({margin})"
        np.testing.assert_array_equal(counts, counts_for_fractions(fractions, full.shape[1]))
        out.append(thresholds)
    return out


def check(model, x, full, thresholds, **kw):
    res = adaptive_forward(model, x, thresholds, **kw)
    expected = offline_exits(full, thresholds)
    idx = res.exit_index.asnumpy()
    np.testing.assert_array_equal(idx, expected)
    assert list(res.exit_counts) == exit_counts(expected, len(full)).tolist()
    diff = np.abs(res.logits.asnumpy() - full[idx, np.arange(x.shape[0])]).max()
    assert diff <= ATOL, diff
    return res


@pytest.mark.parametrize("name, fraction_sets", [
    ("dvt_tiny_t2t", [[0, 0, 1], [0.4, 0.3, 0.3], [1, 0, 0]]),
    ("dvt_tiny_deit_4exit", [[0.25, 0, 0.5, 0.25], [0.5, 0.5, 0, 0]]),
])
def test_pynative_adaptive_equals_full_cascade(pynative, name, fraction_sets):
    model = create_model(name)
    x = images(model.config, 10)
    full = full_cascade(model, x)
    names = [p.name for p in model.get_parameters()]
    for i, thresholds in enumerate(threshold_sets(full, fraction_sets)):
        for fast in (True, False) if i == 0 else (True,):  # default kernels once: they are the cascade's own
            check(model, x, full, thresholds, fast=fast)
    assert [p.name for p in model.get_parameters()] == names  # stages never rename parameters


def test_graph_mode_dynamic_batch_per_stage(pynative):
    model = create_model("dvt_tiny_t2t")
    cfg = model.config
    batches = {b: images(cfg, b, seed=b) for b in (9, 5)}
    fulls = {b: full_cascade(model, x) for b, x in batches.items()}  # PYNATIVE reference
    sets = {9: threshold_sets(fulls[9], [[0, 0, 1], [0.4, 0.3, 0.3]]),
            5: threshold_sets(fulls[5], [[0.4, 0.6, 0], [1, 0, 0]])}
    ms.set_context(mode=ms.GRAPH_MODE)
    for b, x in batches.items():
        for thresholds in sets[b]:
            check(model, x, fulls[b], thresholds)
    # one compiled stage per exit, whatever the batch sizes seen (9, 5 and every active subset)
    keys = [key for key in _STAGES[model] if key[3]]
    assert sorted(key[0] for key in keys) == [0, 1, 2]


def test_empty_batch_and_errors(pynative):
    model = create_model("dvt_tiny_deit_2exit")
    res = adaptive_forward(model, Tensor(np.zeros((0, 3, 32, 32), np.float32)), [0.5])
    assert res.logits.shape == (0, 10) and res.exit_index.shape == (0,) and res.exit_counts == (0, 0)
    x = images(model.config, 2)
    with pytest.raises(ValueError, match="needs 1 or 2 thresholds"):
        adaptive_forward(model, x, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="scored criterion"):
        adaptive_forward(model, x, [0.5], "random")
    model.set_train(True)
    with pytest.raises(ValueError, match="eval mode"):
        adaptive_forward(model, x, [0.5])


def test_forward_adaptive_method_and_need_logits(pynative):
    model = create_model("dvt_tiny_deit_2exit")
    x = images(model.config, 4)
    full = full_cascade(model, x)
    t = threshold_sets(full, [[0.5, 0.5]])[0]
    a, b = model.forward_adaptive(x, t), check(model, x, full, t)
    assert np.array_equal(a.logits.asnumpy(), b.logits.asnumpy())
    attn = Attention(64, 4, qkv_bias=True, scale=0.3)
    h = Tensor(np.random.RandomState(1).randn(2, 5, 64).astype(np.float32))
    out, logits = attn(h)
    out2, none = attn(h, None, False)
    assert none is None and logits.shape == (2, 4, 5, 5)
    assert np.array_equal(out.asnumpy(), out2.asnumpy())  # explicit path either way on CPU


def row_by_row(full: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The offline rule applied to each sample alone, with its own thresholds."""
    return np.array([offline_exits(full[:, i:i + 1], rows[i])[0] for i in range(full.shape[1])])


def test_per_sample_thresholds_share_one_batch(pynative):
    """Requests with different thresholds in one batch, PYNATIVE and GRAPH: each sample decided by its own row."""
    model = create_model("dvt_tiny_deit_4exit")
    x = images(model.config, 10)
    full = full_cascade(model, x)
    sets = threshold_sets(full, [[0.25, 0, 0.5, 0.25], [0.5, 0.5, 0, 0], [0, 0, 0, 1]])
    rows = np.stack([sets[i % 3] for i in range(10)])
    res = check(model, x, full, rows)
    np.testing.assert_array_equal(res.exit_index.asnumpy(), row_by_row(full, rows))
    assert len(set(res.exit_index.asnumpy().tolist())) > 1  # the batch really splits
    check(model, x, full, rows[:, :-1])  # K-1 columns imply the last exit's -inf
    with pytest.raises(ValueError, match="for 9 samples, the batch has 10"):
        adaptive_forward(model, x, rows[:9])
    two = create_model("dvt_tiny_deit_2exit")
    x2 = images(two.config, 6, seed=3)
    full2 = full_cascade(two, x2)
    rows2 = np.stack([threshold_sets(full2, [[0.5, 0.5], [1, 0], [0, 1]])[i % 3] for i in range(6)])
    ms.set_context(mode=ms.GRAPH_MODE)
    res2 = check(two, x2, full2, rows2)
    np.testing.assert_array_equal(res2.exit_index.asnumpy(), row_by_row(full2, rows2))


@pytest.mark.slow
def test_full_size_pynative_adaptive_equals_full_cascade(pynative):
    """DVT T2T-ViT-12 (7 -> 10 -> 14 tokens, both reuses) at batch 3, shared and per-sample thresholds."""
    model = create_model("dvt_t2t_vit_12")
    x = images(model.config, 3)
    full = full_cascade(model, x)
    check(model, x, full, threshold_sets(full, [[1 / 3, 1 / 3, 1 / 3]])[0])
    s = np.stack([scores(lg) for lg in full])
    leave_at, rows = [2, 0, 1], np.full((3, 3), -np.inf)  # per-sample thresholds: every exit in one batch
    for i, e in enumerate(leave_at):  # each threshold 1% of the sample's score away from it
        rows[i, :e] = s[:e, i] * 1.01
        if e < 2:
            rows[i, e] = s[e, i] * 0.99
    res = check(model, x, full, rows)
    assert res.exit_index.asnumpy().tolist() == leave_at == row_by_row(full, rows).tolist()
