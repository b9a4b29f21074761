"""The exported-graph runner (common.deploy) on a tiny ONNX export: early exit equal to forward_adaptive,
fixed batch sizes (padding and splitting) whose pad rows never touch a real row, and the refusals.

The cross-framework and every-config checks are in parity/test_parity_export.py; here one tiny model."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import get_config
from common.adaptive import scores, thresholds_for_fractions
from common.deploy import DeployError, load_runner, read_manifest
from common.deploy.batching import batch_plan, padded_rows, take_padded
from common.deploy.exporting import export_model
from torch_impl.models import DVT

ROOT = Path(__file__).resolve().parents[1]
NAME = "dvt_tiny_t2t"
SIZES = (2, 3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DVT(get_config(NAME)).eval()


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy_runner")
    dyn = export_model(model, root / "dynamic", "onnx", None, verify=False).directory
    static = export_model(model, root / "static", "onnx", SIZES, thresholds=None, verify=True).directory
    return {"dynamic": dyn, "static": static}


def images(n, seed=0):
    cfg = get_config(NAME)
    return torch.from_numpy(np.random.RandomState(seed).randn(n, cfg.in_chans, cfg.img_size, cfg.img_size)
                            .astype(np.float32))


def test_batch_plan_pads_to_the_smallest_size_and_splits_larger_groups():
    assert batch_plan(0, (1, 8)) == []
    assert batch_plan(5, None) == [(0, 5, None)]
    assert batch_plan(5, (1, 8, 32)) == [(0, 5, 8)]
    assert batch_plan(8, (1, 8, 32)) == [(0, 8, 8)]
    assert batch_plan(1, (1, 8, 32)) == [(0, 1, 1)]
    assert batch_plan(70, (1, 8, 32)) == [(0, 32, 32), (32, 64, 32), (64, 70, 8)]
    assert batch_plan(7, (3,)) == [(0, 3, 3), (3, 6, 3), (6, 7, 3)]
    assert padded_rows(70, (1, 8, 32)) == 2 and padded_rows(7, (3,)) == 2 and padded_rows(9, None) == 0
    # "fit": a pad row and a call cost alike; the least total wins
    sizes = (1, 8, 16, 32, 64)
    assert [s for _, _, s in batch_plan(10, sizes, "fit")] == [8, 1, 1]
    assert [s for _, _, s in batch_plan(7, sizes, "fit")] == [8]
    assert [s for _, _, s in batch_plan(26, sizes, "fit")] == [16, 8, 1, 1]
    assert [s for _, _, s in batch_plan(38, sizes, "fit")] == [32, 8] and padded_rows(38, sizes, "fit") == 2
    assert batch_plan(7, (2, 3), "fit") == [(0, 3, 3), (3, 5, 2), (5, 7, 2)]
    for n in range(1, 80):
        plan = batch_plan(n, sizes, "fit")
        assert plan[0][0] == 0 and plan[-1][1] == n and all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
        assert padded_rows(n, sizes, "fit") <= padded_rows(n, sizes, "pad")
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    p = take_padded(a, 4, 6, 4)
    assert p.shape == (4, 2) and p.flags.c_contiguous
    np.testing.assert_array_equal(p[:2], a[4:6])
    assert (p[2:] == 0).all()


def test_export_folder_holds_the_declared_graphs(exports, model):
    m = read_manifest(exports["static"])
    assert m.batch_sizes == SIZES and m.num_exits == 3
    assert sorted(m.data["files"]) == sorted(f"exit{k}_b{s}.onnx" for k in (1, 2, 3) for s in SIZES)
    assert [s.name for s in m.inputs(0)] == ["x"]
    assert [s.name for s in m.inputs(1)] == ["x", "prev_features", "prev_relations.0", "prev_relations.1"]
    assert [s.name for s in m.outputs(2)] == ["logits"]  # the last exit returns logits only
    assert m.data["verification"] and all(max(c["max_abs_diff"].values()) < 1e-5 for c in m.data["verification"])
    assert m.preprocessing["resize"] == 32 and m.preprocessing["interpolation"] == "bilinear"  # crop_pct 1.0
    np.testing.assert_allclose(m.gflops, [0.002117652, 0.00526972, 0.00945609], rtol=1e-5)


@pytest.mark.parametrize("kind, batching", [("dynamic", "pad"), ("static", "pad"), ("static", "fit")])
def test_runner_equals_forward_adaptive_over_a_threshold_sweep(exports, model, kind, batching):
    runner = load_runner(exports[kind], threads=1, batching=batching)
    x = images(7)
    with torch.no_grad():
        full = [lg.numpy() for lg in model(x)]
    s = np.stack([scores(lg) for lg in full])
    # the graphs' own scores differ from torch's by rounding only; every threshold below sits farther away
    rounding = np.abs(np.stack([scores(lg) for lg in runner.run_cascade(x.numpy())]) - s).max()
    padded = calls = 0
    for fractions in ([1, 0, 0], [0, 0, 1], [0.3, 0.3, 0.4], [0.6, 0.1, 0.3], [0, 0.5, 0.5]):
        t, counts, margin = thresholds_for_fractions(s, fractions)
        assert margin > 4 * rounding
        ref = model.forward_adaptive(x, t)
        res = runner.run(x.numpy(), t)
        assert res.exit_counts == ref.exit_counts == tuple(counts)
        np.testing.assert_array_equal(res.exit_index, ref.exit_index.numpy())
        assert np.abs(res.logits - ref.logits.numpy()).max() <= 1e-5
        np.testing.assert_allclose(res.gflops, runner.manifest.gflops[res.exit_index])
        padded, calls = padded + sum(res.padded_rows), max(calls, max(res.graph_calls))
    # one threshold row per image (requests with different budgets in one batch)
    rows = np.stack([thresholds_for_fractions(s, f)[0] for f in ([1, 0, 0], [0, 0, 1], [0.3, 0.3, 0.4])] * 3)[:7]
    ref = model.forward_adaptive(x, rows)
    res = runner.run(x.numpy(), rows)
    np.testing.assert_array_equal(res.exit_index, ref.exit_index.numpy())
    assert np.abs(res.logits - ref.logits.numpy()).max() <= 1e-5 and len(set(res.exit_index.tolist())) > 1
    if kind == "dynamic":
        assert padded == 0
    else:  # 7 rows at exit 1: "pad" 3 + 3 + (1 padded to 2), "fit" 3 + 2 + 2
        assert calls == 3 and (batching == "fit" or padded > 0)


def test_pad_rows_never_change_a_real_row(exports):
    """Fill the pad rows with NaN: the real rows' outputs stay bit for bit those of zero padding (no op of
    an exit mixes rows), and no NaN leaks into them."""
    runner = load_runner(exports["static"], threads=1)
    x = images(3, seed=4).numpy()
    stages = runner.run_stage(0, [x])[0]
    for k, feeds in ((0, [x]), (1, [x] + stages[1:])):
        rows = feeds[0][:1]
        zero = runner.backend.run(k, 2, [take_padded(f[:1], 0, 1, 2) for f in feeds])
        nan = runner.backend.run(k, 2, [take_padded(f[:1], 0, 1, 2, fill=np.nan) for f in feeds])
        assert np.isnan(nan[0][1:]).all()  # the pad row's logits are NaN: the NaN went through the graph
        for z, n in zip(zero, nan):
            assert np.isfinite(n[:1]).all()
            np.testing.assert_array_equal(z[:1], n[:1])
        assert rows.shape[0] == 1


def test_empty_batch_and_default_thresholds(exports):
    runner = load_runner(exports["dynamic"], threads=1)
    res = runner.run(np.zeros((0, 3, 32, 32), np.float32), [0.5, 0.5])
    assert res.logits.shape == (0, 10) and res.exit_index.shape == (0,) and res.exit_counts == (0, 0, 0)
    with pytest.raises(DeployError, match="no thresholds given"):
        runner.run(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(DeployError, match="budget needs a threshold curve"):
        runner.run(np.zeros((1, 3, 32, 32), np.float32), budget=0.005)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 3, 32, 32), np.float64), "got dtype float64"),
    (np.zeros((2, 1, 32, 32), np.float32), "got shape (2, 1, 32, 32)"),
    (np.zeros((2, 3, 28, 28), np.float32), "got shape (2, 3, 28, 28)"),
    (np.zeros((3, 32, 32), np.float32), "got shape (3, 32, 32)"),
    ([[0.0]], "as a numpy array"),
])
def test_wrong_images_name_the_manifest_expectation(exports, bad, words):
    runner = load_runner(exports["dynamic"], threads=1)
    with pytest.raises(DeployError, match=r"float32 images of shape \(B, 3, 32, 32\)") as err:
        runner.run(bad, [0.5, 0.5])
    assert words in str(err.value)


def _copy(src, tmp_path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    return dst


def test_damaged_missing_or_foreign_exports_are_refused(exports, tmp_path):
    d = _copy(exports["dynamic"], tmp_path)
    graph = d / "exit2.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(DeployError, match="sha256 .* refusing to run it"):
        load_runner(d)
    graph.unlink()
    with pytest.raises(DeployError, match="exit2.onnx is missing"):
        load_runner(d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["graph_format"] = "tflite"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DeployError, match="unknown graph format 'tflite'"):
        load_runner(d)
    with pytest.raises(DeployError, match="no manifest.json"):
        load_runner(tmp_path)
    with pytest.raises(DeployError, match="runs mindir graphs"):
        load_runner(exports["dynamic"], backend="mindspore")


NO_FRAMEWORK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'mindspore', 'timm', 'torchvision'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from common.deploy import load_runner
runner = load_runner(sys.argv[1], threads=1)
x = np.random.RandomState(0).randn(5, 3, 32, 32).astype(np.float32)
res = runner.run(x, [0.11, 0.11])
leaked = [m for m in ('torch', 'mindspore', 'timm') if m in sys.modules]
assert not leaked, leaked
print('OK', res.exit_counts, res.logits.shape)
"""


def test_onnx_runner_needs_neither_torch_nor_mindspore(exports):
    proc = subprocess.run([sys.executable, "-c", NO_FRAMEWORK, str(exports["static"])], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout and "(5, 10)" in proc.stdout
