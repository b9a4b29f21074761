"""The inference kernels of DVT's reuse paths against the batched reference computation.

Eager CPU inference computes the relation-reuse MLP image by image and resamples each block's maps when
the block asks for them (`ReusedRelations`); adaptive inference can defer an exit's attention logits to
after the exit decision (`DeferredRelations`). Both must give the maps of the batched (autograd, traced,
FLOPs-counted) computation within fp32 rounding: measured <= 6e-8 on these tiny configs.
"""
import pytest
import torch

from torch_impl import create_model
from torch_impl.models.exit import DeferredRelations, ReusedRelations
from torch_impl.models.resample import GridResample

ATOL = 1e-6


def _model_and_outputs(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(5, 3, model.config.img_size, model.config.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = model.forward_exits(x)
    return model, x, outs


@pytest.mark.parametrize("src, dst", [(3, 5), (4, 4), (7, 10), (5, 10)])
def test_relations_into_equals_relations(src, dst):
    resample = GridResample(src, dst)
    r = torch.randn(6, 1 + src * src, 1 + src * src)
    out = torch.full((6, 1 + dst * dst, 1 + dst * dst), float("nan"))
    with torch.no_grad():
        resample.relations_into(r, out)
        expected = resample.relations(r)
    assert (out - expected).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit_4exit"])
def test_reused_relations_by_image_equal_batched(name):
    model, _, outs = _model_and_outputs(name)
    rows = torch.tensor([3, 0])
    for k, ex in enumerate(model.exits):
        if not ex.relation_reuse:
            continue
        prev = outs[k - 1].relations
        with torch.no_grad():
            lazy = ex.reuse_relations(prev)
        with torch.enable_grad():
            batched = [r.detach() for r in ex.reuse_relations(prev)]
        assert isinstance(lazy, ReusedRelations) and len(lazy) == len(batched) == model.config.depth
        for l, expected in enumerate(batched):
            assert (lazy[l] - expected).abs().max() <= ATOL
            assert (lazy.block(l, rows) - expected[rows]).abs().max() <= ATOL
        # what the exit added to its logits is what the batched computation gives
        assert all((a - b).abs().max() <= ATOL for a, b in zip(outs[k].reused_relations, batched))


@pytest.mark.parametrize("kept", ["qk", "input"])
def test_deferred_relations_equal_explicit_ones(kept):
    model, x, outs = _model_and_outputs("dvt_tiny_t2t")
    rows = torch.tensor([4, 1, 2])
    for k, ex in enumerate(model.exits[:-1]):
        prev = (outs[k - 1].features, outs[k - 1].relations) if k else (None, None)
        args = (x, prev[0] if ex.feature_reuse else None, prev[1] if ex.relation_reuse else None)
        with torch.no_grad():
            logits, features, deferred = ex(*args, defer_relations=kept)
            assert isinstance(deferred, DeferredRelations)
            for index, expected in ((None, outs[k].relations), (rows, [r[rows] for r in outs[k].relations])):
                got = deferred.rows(index)
                assert len(got) == len(expected)
                assert max(float((a - b).abs().max()) for a, b in zip(got, expected)) <= ATOL
        assert (logits - outs[k].logits).abs().max() <= ATOL and (features - outs[k].features).abs().max() <= ATOL


def test_deferral_is_checked():
    model, x, _ = _model_and_outputs("dvt_tiny_t2t")
    with pytest.raises(ValueError, match="defer_relations must be"):
        model.exits[0](x, defer_relations="yes")
    with pytest.raises(ValueError, match="cannot defer"):
        model.exits[0](x, collect=True, defer_relations="qk")
