"""The service's backends (common.serving.backend): PyTorch, MindSpore and an ONNX export of the same trained
digits run give the same exits and logits for a batch whose rows carry different thresholds, and the checkpoint's
curve comes along. Per-row thresholds through the exported-graph runner are checked here too."""
import numpy as np
import pytest
import torch

from common.adaptive import scores, thresholds_for_fractions
from common.deploy.exporting import export_model
from common.serving.backend import ExportBackend, curve_from_extras, load_backend
from common.thresholds import ThresholdCurve
from torch_impl.checkpoint import read_checkpoint, save_checkpoint
from torch_impl.serving import TorchBackend

MIN_MARGIN = 1e-6  # every score this far from its threshold: fp32 rounding (~1e-8 in a score) cannot flip it


@pytest.fixture(scope="module")
def torch_backend(short_torch_run):
    threads = torch.get_num_threads()
    yield TorchBackend.from_checkpoint(short_torch_run / "checkpoint.pth", threads=1)
    torch.set_num_threads(threads)  # the backend sets the process's threads: give them back


@pytest.fixture(scope="module")
def batch(torch_backend):
    """The first seeded batch whose scores leave room for thresholds MIN_MARGIN away from all of them."""
    for seed in range(20):
        x = np.random.default_rng(seed).standard_normal((12,) + torch_backend.input_shape).astype(np.float32)
        full = torch_backend.cascade(x)
        s = np.stack([scores(lg) for lg in full])
        found = [thresholds_for_fractions(s, f) for f in ([0.5, 0.25, 0.25], [0, 0, 1], [1, 0, 0], [0.2, 0.6, 0.2])]
        if min(margin for _, _, margin in found) >= MIN_MARGIN:
            rows = np.stack([found[i % 4][0] for i in range(12)])  # four budgets in one batch
            return x, full, rows
    raise AssertionError("no batch with well-separated scores")


def check(out, full, rows, ref_exits=None):
    from common.adaptive import offline_exits

    expected = offline_exits(full, rows) if ref_exits is None else ref_exits
    np.testing.assert_array_equal(out.exit_index, expected)
    assert np.abs(out.logits - full[expected, np.arange(len(expected))]).max() <= 1e-5


def test_torch_backend_and_its_curve(torch_backend, batch, short_torch_run):
    x, full, rows = batch
    out = torch_backend.run(x, rows)
    check(out, full, rows)
    assert len(set(out.exit_index.tolist())) == 3
    raw = read_checkpoint(short_torch_run / "checkpoint.pth")
    curve = ThresholdCurve.load(raw)  # the run's default solver
    assert torch_backend.curve.solver == curve.solver == curve_from_extras(raw).solver
    np.testing.assert_array_equal(torch_backend.curve.thresholds, curve.thresholds)
    assert torch_backend.preprocessing["img_size"] == 32 and torch_backend.gflops.shape == (3,)


def test_onnx_export_takes_per_row_thresholds(torch_backend, batch, tmp_path):
    x, full, rows = batch
    export_model(torch_backend.model, tmp_path / "onnx", "onnx", None, verify=False)
    onnx = ExportBackend(tmp_path / "onnx", "onnx", threads=1)
    check(onnx.run(x, rows), full, rows)
    res = onnx.runner.run(x, rows[:, :-1])  # K-1 columns, the runner's own API
    check(res, full, rows)
    with pytest.raises(ValueError, match=r"expected \(3,\) or \(12, 3\)"):
        onnx.runner.run(x, rows[:5])


def test_mindspore_backend_equals_torch(torch_backend, batch, tmp_path, short_torch_run):
    from ms_impl.serving import MindSporeBackend

    x, full, rows = batch
    from ms_impl import create_model
    from ms_impl.checkpoint import save_checkpoint as ms_save

    raw = read_checkpoint(short_torch_run / "checkpoint.pth")
    weights = save_checkpoint(torch_backend.model, tmp_path / "digits.safetensors")
    ckpt = ms_save(create_model("dvt_tiny_digits", checkpoint_path=str(weights)), tmp_path / "digits.ckpt",
                   extras={"thresholds": raw["thresholds"], "default_solver": raw.get("default_solver")})
    ms = load_backend(ckpt, threads=1)  # .ckpt: MindSpore by default
    assert isinstance(ms, MindSporeBackend) and ms.curve.solver == torch_backend.curve.solver
    out = ms.run(x, rows)
    check(out, full, rows, ref_exits=torch_backend.run(x, rows).exit_index)


def test_load_backend_names_what_it_needs(short_torch_run, tmp_path):
    ckpt = short_torch_run / "checkpoint.pth"
    with pytest.raises(ValueError, match="no such checkpoint"):
        load_backend(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="--backend onnx serves an export folder"):
        load_backend(ckpt, "onnx")
    with pytest.raises(ValueError, match="without manifest.json"):
        load_backend(tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(ckpt, "tensorrt")
    with pytest.raises(ValueError, match="no 'nope' curve"):
        curve_from_extras(read_checkpoint(ckpt), "nope")
