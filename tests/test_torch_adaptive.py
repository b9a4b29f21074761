"""Real early exit in torch_impl (`adaptive_forward`) equals "full cascade + offline exit rule".

For every sample: the exit index equals `common.adaptive.offline_exits` on the full cascade's logits,
and the logits equal that exit's full-cascade logits within fp32 noise. Measured on CPU: 0 with
`fast=False` on the tiny configs, <= 1.5e-7 with the fused last exit, <= 2e-6 at full size;
the tolerance is 1e-5.

Thresholds are taken away from the observed confidences (midpoints between neighbouring confidences of
the batch, `thresholds_for_fractions`), and the tests assert that every confidence is at least 1e-6 from
its threshold: a batch-size-dependent BLAS rounding (logit noise ~1e-6, confidence noise ~1e-8 at most)
then cannot flip a decision, which would be a property of floating point, not a bug.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common
from common.exits import per_exit
from common.adaptive import (counts_for_fractions, exit_counts, leave_mask, offline_exits, scores,
                             thresholds_for_fractions)
from common.thresholds import ThresholdCurve
from common.thresholds.rule import exit_indices
from torch_impl import create_model
from torch_impl.models import AdaptiveResult, adaptive_forward
from torch_impl.models.attention import Attention

ATOL = 1e-5
MIN_MARGIN = 1e-6


def seeded(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name).eval()


def images(cfg, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)


def mixtures(k: int) -> list:
    """Exit fractions: all at exit 1, all at the last, even, and ones that leave later stages empty."""
    out = [[1.0] + [0.0] * (k - 1), [0.0] * (k - 1) + [1.0], [1.0 / k] * k]
    if k >= 3:
        out += [[0.5, 0.5] + [0.0] * (k - 2), [0.25, 0.0] + [0.75 / (k - 2)] * (k - 2)]
    return out


def full_cascade(model, x) -> np.ndarray:
    with torch.inference_mode():
        return torch.stack(per_exit(model(x))).numpy()


def check(model, x, full: np.ndarray, thresholds, criterion="confidence", **kw) -> AdaptiveResult:
    with torch.inference_mode():
        res = adaptive_forward(model, x, thresholds, criterion, **kw)
    expected = offline_exits(full, thresholds, criterion)
    idx = res.exit_index.numpy()
    assert res.exit_index.dtype == torch.int64
    np.testing.assert_array_equal(idx, expected)
    assert list(res.exit_counts) == exit_counts(expected, len(full)).tolist()
    assert res.logits.shape == (x.shape[0], model.config.num_classes)
    diff = np.abs(res.logits.numpy() - full[idx, np.arange(x.shape[0])]).max()
    assert diff <= ATOL, diff
    return res


def threshold_sets(full, criterion="confidence", fraction_sets=None):
    """[(fractions, thresholds)] splitting the batch as asked, or None if a confidence is < MIN_MARGIN away."""
    s = np.stack([scores(lg, criterion) for lg in full])
    out = []
    for fractions in fraction_sets or mixtures(len(full)):
        thresholds, counts, margin = thresholds_for_fractions(s, fractions)
        if margin < MIN_MARGIN:
            return None
        np.testing.assert_array_equal(counts, counts_for_fractions(fractions, full.shape[1]))
        out.append((fractions, thresholds))
    return out


def batch_and_thresholds(model, batch, criterion="confidence", fraction_sets=None):
    """The first seeded batch whose confidences leave room for thresholds >= MIN_MARGIN away from all of them."""
    for seed in range(1, 20):
        x = images(model.config, batch, seed)
        full = full_cascade(model, x)
        sets = threshold_sets(full, criterion, fraction_sets)
        if sets is not None:
            return x, full, sets
    raise AssertionError("no batch with well-separated confidences")


class StageSpy:
    """Records the batch size of the inputs every exit is called with (forward pre-hooks)."""

    def __init__(self, model):
        self.calls = []
        self.handles = [e.register_forward_pre_hook(self.hook(k)) for k, e in enumerate(model.exits)]

    def hook(self, k):
        def record(_module, args):
            x, feats, rels = args
            rows = {x.shape[0]}
            rows |= {feats.shape[0]} if feats is not None else set()
            rows |= {r.shape[0] for r in rels} if rels is not None else set()
            assert len(rows) == 1, f"exit {k}: inputs with different batch sizes {rows}"
            self.calls.append((k, x.shape[0]))
        return record

    def remove(self):
        for h in self.handles:
            h.remove()


TINY = ["dvt_tiny_t2t", "dvt_tiny_t2t_transformer", "dvt_tiny_t2t_feature_reuse", "dvt_tiny_t2t_relation_reuse",
        "dvt_tiny_t2t_no_reuse", "dvt_tiny_deit", "dvt_tiny_deit_2exit", "dvt_tiny_deit_4exit", "t2t_vit_tiny"]


@pytest.mark.parametrize("name", TINY)
def test_adaptive_equals_full_cascade_and_offline_rule(name):
    model = seeded(name)
    x, full, sets = batch_and_thresholds(model, 12)
    spy = StageSpy(model)
    for i, (fractions, thresholds) in enumerate(sets):
        for fast in (True, False) if i in (1, 2) else (True,):  # default kernels: all-to-last and even split
            spy.calls.clear()
            res = check(model, x, full, thresholds, fast=fast)
            # exit k ran once, on exactly the samples that reached it; empty stages never ran
            reached = x.shape[0] - np.concatenate([[0], np.cumsum(res.exit_counts)[:-1]])
            assert spy.calls == [(k, int(n)) for k, n in enumerate(reached) if n > 0], (fractions, spy.calls)
    spy.remove()


def test_entropy_criterion_and_unsorted_thresholds():
    model = seeded("dvt_tiny_deit_4exit")
    x, full, sets = batch_and_thresholds(model, 16, "entropy")
    for _, thresholds in sets:
        check(model, x, full, thresholds, "entropy")
    # any thresholds, not only decreasing ones; K-1 values imply the last exit's -inf
    s = np.sort(np.stack([scores(lg) for lg in full]), axis=1)
    t = [(s[0, 7] + s[0, 8]) / 2, (s[1, 2] + s[1, 3]) / 2, np.inf]
    assert min(abs(s[k] - t[k]).min() for k in range(2)) >= MIN_MARGIN
    check(model, x, full, t)


def test_online_decisions_equal_offline_bit_for_bit_on_the_same_logits():
    """The rule applied stage by stage to the active rows == exit_indices on all rows."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50, 7)).astype(np.float32)
    s = np.stack([scores(lg) for lg in logits])
    t = np.array([np.quantile(s[0], 0.5), np.quantile(s[1], 0.3), -np.inf])
    online = np.full(50, 2)
    active = np.arange(50)
    for k in range(3):
        leave = leave_mask(logits[k, active], t, k)
        online[active[leave]] = k
        active = active[~leave]
    np.testing.assert_array_equal(online, exit_indices(s, t))
    np.testing.assert_array_equal(scores(logits[1, 10:20]), s[1, 10:20])  # row-wise: bitwise equal


def test_empty_batch_runs_nothing():
    model = seeded("dvt_tiny_t2t")
    spy = StageSpy(model)
    res = adaptive_forward(model, torch.zeros(0, 3, 32, 32), [0.5, 0.5])
    spy.remove()
    assert spy.calls == [] and res.logits.shape == (0, 10) and res.exit_index.shape == (0,)
    assert res.exit_counts == (0, 0, 0)


def test_threshold_curve_with_budget_and_errors():
    model = seeded("dvt_tiny_t2t")
    cfg = model.config
    x = images(cfg, 8)
    full = full_cascade(model, x)
    s = np.stack([scores(lg) for lg in full])
    rows = [thresholds_for_fractions(s, f)[0] for f in ([1, 0, 0], [0.5, 0.25, 0.25], [0, 0, 1])]
    gflops = np.array(common.cumulative_gflops(cfg))
    curve = ThresholdCurve(solver="manual", criterion="confidence", gflops=gflops,
                           budgets=[gflops[0], gflops.mean(), gflops[-1]], thresholds=rows,
                           accuracy=[0.1, 0.2, 0.3], expected_gflops=[gflops[0], gflops.mean(), gflops[-1]],
                           exit_fractions=[[1, 0, 0], [0.5, 0.25, 0.25], [0, 0, 1]])
    budget = float(gflops.mean())
    via_curve = check(model, x, full, curve.thresholds_for_budget(budget))
    res = model.forward_adaptive(x, curve, budget=budget)
    assert torch.equal(res.logits, via_curve.logits) and torch.equal(res.exit_index, via_curve.exit_index)
    with pytest.raises(ValueError, match="needs a budget"):
        adaptive_forward(model, x, curve)
    with pytest.raises(ValueError, match="only meaningful with a ThresholdCurve"):
        adaptive_forward(model, x, [0.5, 0.5], budget=1.0)
    with pytest.raises(ValueError, match="does not match"):
        adaptive_forward(model, x, curve, "entropy", budget=budget)
    with pytest.raises(ValueError, match="scored criterion"):
        adaptive_forward(model, x, [0.5, 0.5], "random")
    with pytest.raises(ValueError, match="needs 2 or 3 thresholds"):
        adaptive_forward(model, x, [0.5])
    with pytest.raises(ValueError, match=r"expected input of shape"):
        adaptive_forward(model, torch.zeros(2, 1, 32, 32), [0.5, 0.5])
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        adaptive_forward(model, x, [0.5, 0.5])


def row_by_row(full: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The offline rule applied to each sample alone, with its own thresholds."""
    return np.array([offline_exits(full[:, i:i + 1], rows[i])[0] for i in range(full.shape[1])])


def apart(full: np.ndarray, leave_at: list) -> np.ndarray:
    """Thresholds (B, K) sending sample i out at exit leave_at[i], each 1% of its score away from it."""
    s = np.stack([scores(lg) for lg in full])
    rows = np.full((full.shape[1], len(full)), -np.inf)
    for i, e in enumerate(leave_at):
        rows[i, :e] = s[:e, i] * 1.01  # just above its score: stays
        if e < len(full) - 1:
            rows[i, e] = s[e, i] * 0.99  # just below: leaves
    return rows


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit_4exit", "dvt_tiny_deit_2exit"])
def test_per_sample_thresholds_share_one_batch(name):
    """Requests with different thresholds in one batch: each sample decided by its own row."""
    model = seeded(name)
    x, full, sets = batch_and_thresholds(model, 12)
    rows = np.stack([sets[i % len(sets)][1] for i in range(12)])
    spy = StageSpy(model)
    res = check(model, x, full, rows)
    spy.remove()
    np.testing.assert_array_equal(res.exit_index.numpy(), row_by_row(full, rows))
    assert len(set(res.exit_index.tolist())) > 1  # the batch really splits
    reached = 12 - np.concatenate([[0], np.cumsum(res.exit_counts)[:-1]])
    assert spy.calls == [(k, int(n)) for k, n in enumerate(reached) if n > 0]  # still one call per exit
    check(model, x, full, rows[:, :-1])  # K-1 columns imply the last exit's -inf
    for i in (0, 5):  # a sample alone with its row leaves where it left in the shared batch
        alone = adaptive_forward(model, x[i:i + 1], rows[i])
        assert alone.exit_index.item() == res.exit_index[i].item()
    with pytest.raises(ValueError, match="for 11 samples, the batch has 12"):
        adaptive_forward(model, x, rows[:11])


def test_per_sample_budgets_from_a_curve():
    model = seeded("dvt_tiny_t2t")
    x = images(model.config, 6)
    full = full_cascade(model, x)
    gflops = np.array(common.cumulative_gflops(model.config))
    curve = ThresholdCurve(solver="manual", criterion="confidence", gflops=gflops, budgets=gflops,
                           thresholds=[[-np.inf] * 3, [np.inf, -np.inf, -np.inf], [np.inf, np.inf, -np.inf]],
                           accuracy=[0.1, 0.2, 0.3], expected_gflops=gflops,
                           exit_fractions=np.eye(3))
    budget = gflops[[0, 2, 1, 1, 0, 2]]
    res = model.forward_adaptive(x, curve, budget=budget)
    np.testing.assert_array_equal(res.exit_index.numpy(), [0, 2, 1, 1, 0, 2])  # each sample its own budget
    assert np.abs(res.logits.numpy() - full[[0, 2, 1, 1, 0, 2], np.arange(6)]).max() <= ATOL


@pytest.mark.parametrize("reused", [False, True])
def test_fused_attention_matches_explicit(reused):
    torch.manual_seed(0)
    attn = Attention(64, 4, qkv_bias=True, scale=0.3).eval()
    x = torch.randn(3, 17, 64)
    r = torch.randn(3, 4, 17, 17) if reused else None
    with torch.no_grad():
        out, logits = attn(x, r)
        fused, none = attn(x, r, need_logits=False)
    assert logits.shape == (3, 4, 17, 17) and none is None
    assert (out - fused).abs().max() <= 1e-6


def test_default_paths_never_use_the_fused_kernel(monkeypatch):
    """forward / forward_exits (parity, FLOPs) keep the explicit attention."""
    model = seeded("dvt_tiny_t2t")
    x = images(model.config, 2)

    def boom(*a, **k):
        raise AssertionError("scaled_dot_product_attention used outside the adaptive path")

    monkeypatch.setattr(F, "scaled_dot_product_attention", boom)
    with torch.no_grad():
        model(x)
        model.forward_exits(x)
        adaptive_forward(model, x, [np.inf, np.inf], fast=False)
        with pytest.raises(AssertionError, match="outside the adaptive path"):
            adaptive_forward(model, x, [np.inf, np.inf])


@pytest.mark.slow
@pytest.mark.parametrize("name, batch", [("dvt_t2t_vit_12", 6), ("dvt_deit_small", 4)])
def test_full_size_adaptive_equals_full_cascade(name, batch):
    model = seeded(name)
    x, full, sets = batch_and_thresholds(model, batch, fraction_sets=[[1, 0, 0], [0, 0, 1], [0.5, 0.25, 0.25]])
    for _, thresholds in sets:
        check(model, x, full, thresholds)
    leave_at = [i % 3 for i in range(batch)]  # per-sample thresholds: every exit in one batch
    rows = apart(full, leave_at)
    res = check(model, x, full, rows)
    assert res.exit_index.tolist() == leave_at == row_by_row(full, rows).tolist()


# ---- fast path: deferred relations, compiled stages, CUDA-graph stages -------------------------------
RELATION_MODES = ["deferred", "recompute", "explicit"]


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_t2t_relation_reuse", "dvt_tiny_deit_4exit"])
@pytest.mark.parametrize("relations", RELATION_MODES)
def test_relation_modes_equal_full_cascade_and_offline_rule(name, relations):
    """Logits for the rows that go on, computed after the decision (kept q/k or recomputed), change nothing."""
    model = seeded(name)
    x, full, sets = batch_and_thresholds(model, 12)
    for _, thresholds in sets:
        check(model, x, full, thresholds, relations=relations)


@pytest.mark.slow
def test_full_size_deferred_relations_equal_default_kernels():
    """dvt_t2t_vit_12 at batch 2: both ways of deferring relations against the default (explicit) kernels."""
    model = seeded("dvt_t2t_vit_12")
    x, full, sets = batch_and_thresholds(model, 2, fraction_sets=[[0.5, 0, 0.5], [0, 0.5, 0.5]])
    for _, thresholds in sets:
        with torch.inference_mode():
            default = adaptive_forward(model, x, thresholds, fast=False)
        for relations in ("deferred", "recompute"):
            res = check(model, x, full, thresholds, relations=relations)
            assert torch.equal(res.exit_index, default.exit_index)
            assert (res.logits - default.logits).abs().max() <= 2e-6


def test_relation_modes_are_checked():
    model = seeded("dvt_tiny_t2t")
    with pytest.raises(ValueError, match="relations must be one of"):
        adaptive_forward(model, images(model.config, 2), [0.5, 0.5], relations="lazy")


def test_compiled_stages_equal_eager(monkeypatch):
    """compile=...: each exit runs through torch.compile (dynamo only here, to stay fast); relation reuse
    then takes its batched fast form, and results equal eager mode."""
    from torch_impl.models.exit import ViTExit
    model = seeded("dvt_tiny_deit_2exit")
    x, full, sets = batch_and_thresholds(model, 12, fraction_sets=[[0.5, 0.5], [0.25, 0.75]])
    seen = []
    batched = ViTExit.reuse_relations

    def spy(self, prev, fast=False):
        seen.append(torch.compiler.is_compiling())
        return batched(self, prev, fast)

    monkeypatch.setattr(ViTExit, "reuse_relations", spy)
    for _, thresholds in sets:  # the second split reuses the stages' graphs (dynamic batch size)
        check(model, x, full, thresholds, compile={"backend": "eager"})
    assert seen and all(seen)


def test_cuda_graph_stages_on_the_cpu_stand_in():
    """StageGraphs with the CPU stand-in of CUDA-graph capture: padded static buffers, one capture per
    (stage, bucket), results equal eager mode; a StageGraphs serves one model only."""
    from torch_impl.cuda_graphs import StageGraphs, eager_capture
    model = seeded("dvt_tiny_t2t")
    x, full, sets = batch_and_thresholds(model, 12)
    graphs = StageGraphs(granularity=8, capture=eager_capture)
    assert [graphs.bucket(n) for n in (1, 8, 9, 12)] == [8, 8, 16, 16]
    for relations in ("deferred", "explicit"):
        for _, thresholds in sets + sets:
            check(model, x, full, thresholds, relations=relations, graphs=graphs)
    captured = len(graphs)
    for _, thresholds in sets:
        check(model, x, full, thresholds, relations="deferred", graphs=graphs)
    assert len(graphs) == captured  # replayed, not captured again
    with pytest.raises(ValueError, match="another model"):
        adaptive_forward(seeded("dvt_tiny_t2t"), x, sets[0][1], graphs=graphs)
