"""Eager inference kernels against the forms that autograd, tracing (fvcore, ONNX) and FLOPs counting see.

Eager CPU inference computes the relation-reuse MLP image by image and resamples each block's maps when
the block asks for them (`ReusedRelations`); adaptive inference can defer an exit's attention logits to
after the exit decision (`DeferredRelations`). Both must give the maps of the batched computation within
fp32 rounding (measured <= 6e-8 on these tiny configs). The T2T soft splits gather patches from window
views instead of `F.unfold`: bit for bit the same.
"""
import numpy as np
import torch.nn.functional as F
import pytest
import torch

from common.config import SoftSplit
from torch_impl import create_model
from torch_impl.models.exit import DeferredRelations, ReusedRelations
from torch_impl.models.resample import GridResample
from torch_impl.models.tokenizers import T2TTokenizer

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


def test_inference_kernels_under_cpu_autocast():
    """bfloat16 autocast (the benchmark's --amp on CPU): the block-by-block maps come out in bfloat16 and
    agree with the batched form under the same autocast to bfloat16 precision."""
    model, _, outs = _model_and_outputs("dvt_tiny_t2t")
    ex, prev = model.exits[1], outs[0].relations
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            lazy = [m.float() for m in ex.reuse_relations(prev)]
            assert ex.reuse_relations(prev)[0].dtype == torch.bfloat16
        with torch.enable_grad():
            batched = [m.detach().float() for m in ex.reuse_relations(prev)]
    scale = max(float(m.abs().max()) for m in batched)
    assert max(float((a - b).abs().max()) for a, b in zip(lazy, batched)) <= 2e-2 * scale


@pytest.mark.parametrize("kernel, stride, padding", [(7, 4, 2), (14, 8, 3), (11, 6, 5), (3, 2, 1), (2, 2, 0)])
def test_soft_split_is_unfold_bit_for_bit(kernel, stride, padding):
    split = SoftSplit(kernel, stride, padding)
    image = torch.randn(2, 3, 40, 40)
    expected = F.unfold(image, kernel, stride=stride, padding=padding).transpose(1, 2)
    assert torch.equal(T2TTokenizer.soft_split(image, split), expected)
    tokens = torch.randn(2, 16 * 16, 5)  # row-major tokens of a 16 x 16 grid, 5 channels
    grid = tokens.transpose(1, 2).reshape(2, 5, 16, 16)
    expected = F.unfold(grid, kernel, stride=stride, padding=padding).transpose(1, 2)
    assert torch.equal(T2TTokenizer.soft_split_tokens(tokens, 16, split), expected)


class _SoftSplits(torch.nn.Module):
    def __init__(self, split):
        super().__init__()
        self.split = split

    def forward(self, image, tokens):
        return T2TTokenizer.soft_split(image, self.split), T2TTokenizer.soft_split_tokens(tokens, 16, self.split)


@pytest.mark.parametrize("kernel, stride, padding", [(7, 4, 2), (14, 8, 3), (3, 2, 1)])
def test_exported_soft_split_is_unfold_bit_for_bit_without_gathers(kernel, stride, padding, tmp_path):
    """Under ONNX export the soft splits are strided slices (`_soft_split_slices`; torch exports `F.unfold` as
    index Gathers, slower in ONNX Runtime): onnxruntime gives F.unfold's values exactly, batch axis dynamic."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    split = SoftSplit(kernel, stride, padding)
    image, tokens = torch.randn(2, 3, 40, 40), torch.randn(2, 16 * 16, 5)
    path = tmp_path / "splits.onnx"
    torch.onnx.export(_SoftSplits(split), (image, tokens), str(path), input_names=["image", "tokens"],
                      output_names=["a", "b"], dynamic_axes={n: {0: "batch"} for n in ("image", "tokens", "a", "b")},
                      opset_version=17, dynamo=False)
    nodes = onnx.load(str(path)).graph.node
    made_by = {out: node.op_type for node in nodes for out in node.output}
    assert {made_by.get(node.input[0]) for node in nodes if node.op_type == "Gather"} <= {"Shape"}  # sizes only
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image, tokens = torch.randn(3, 3, 40, 40), torch.randn(3, 16 * 16, 5)  # another batch size
    a, b = session.run(None, {"image": image.numpy(), "tokens": tokens.numpy()})
    grid = tokens.transpose(1, 2).reshape(3, 5, 16, 16)
    assert np.array_equal(a, F.unfold(image, kernel, stride=stride, padding=padding).transpose(1, 2).numpy())
    assert np.array_equal(b, F.unfold(grid, kernel, stride=stride, padding=padding).transpose(1, 2).numpy())
