"""tools/export.py and tools/infer.py on a trained tiny run: real image files in, the answers of the eager
model with evaluate.py's preprocessing out; every refusal exits 2 and leaves nothing behind."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.adaptive import scores, thresholds_for_fractions
from common.data.digits import load_digits_images
from common.thresholds.curve import ThresholdCurve
from torch_impl import create_model
from torch_impl.data import eval_transform

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import export as export_tool  # noqa: E402
import infer as infer_tool  # noqa: E402


@pytest.fixture(scope="module")
def run(short_torch_run):
    return short_torch_run


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy_cli") / "digits_onnx"
    assert export_tool.main([str(run / "checkpoint.pth"), "--out", str(out), "--format", "onnx",
                             "--batch-sizes", "1,4,8", "--thresholds", str(run / "thresholds.json")]) == 0
    return out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Handwritten digits as real files: 32x32 PNGs and larger JPEGs (resized by the preprocessing)."""
    folder = tmp_path_factory.mktemp("digit_images")
    images, labels = load_digits_images()
    arrays = (images[:12].transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    for i, a in enumerate(arrays):
        sub = folder / str(labels[i])
        sub.mkdir(exist_ok=True)
        if i % 2:
            Image.fromarray(a).resize((40, 36), Image.BICUBIC).save(sub / f"{i:02d}.jpg", quality=92)
        else:
            Image.fromarray(a).save(sub / f"{i:02d}.png")
    return folder


def _results(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_manifest_of_a_trained_run(exported, run):
    m = json.loads((exported / "manifest.json").read_text())
    assert m["model"]["name"] == "dvt_tiny_digits" and m["graph_format"] == "onnx" and m["exported_by"] == "torch"
    assert m["batch"] == {"mode": "static", "sizes": [1, 4, 8]}
    assert len(m["files"]) == 9 and all(len(h) == 64 for h in m["files"].values())
    assert m["checkpoint"]["converted_from"] is None and m["checkpoint"]["format"] == "torch"
    results = json.loads((run / "thresholds.json").read_text())
    solver = results.get("default_solver") or "geometric"
    assert m["thresholds"]["solver"] == solver
    assert m["thresholds"]["curve"] == results["solvers"][solver]["curve"]
    assert {"torch", "onnx", "onnxruntime", "python", "numpy"} <= set(m["versions"])
    assert len(m["verification"]) == 9 and max(max(c["max_abs_diff"].values()) for c in m["verification"]) < 1e-5
    assert not list(exported.parent.glob(".*staging*"))


def test_infer_gives_the_eager_models_answers(exported, run, image_folder, tmp_path):
    out = tmp_path / "results.jsonl"
    curve = ThresholdCurve.from_dict(json.loads((exported / "manifest.json").read_text())["thresholds"]["curve"])
    budget = float(curve.expected_gflops.max())  # the curve's most accurate point
    assert infer_tool.main([str(exported), "--image-folder", str(image_folder), "--budget", str(budget),
                            "--batch-size", "5", "--out", str(out)]) == 0
    rows = _results(out)
    paths = sorted(str(p) for p in image_folder.rglob("*.*"))
    assert [r["path"] for r in rows] == paths
    model = create_model("dvt_tiny_digits", checkpoint_path=run / "checkpoint.pth").eval()
    transform = eval_transform(model.config)  # what torch_impl/evaluate.py applies
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    ref = model.forward_adaptive(x, curve, budget=budget)
    assert [r["exit"] - 1 for r in rows] == ref.exit_index.tolist()
    assert [r["class"] for r in rows] == ref.logits.argmax(1).tolist()
    probs = torch.softmax(ref.logits.double(), 1).max(1).values.numpy()
    assert np.abs(np.array([r["confidence"] for r in rows]) - probs).max() < 1e-6
    gflops = np.array(curve.gflops)[ref.exit_index.numpy()]
    np.testing.assert_allclose([r["gflops"] for r in rows], gflops, rtol=1e-9)

    # thresholds that make these images leave at every exit (midpoints between their own confidences)
    with torch.no_grad():
        s = np.stack([scores(lg.numpy()) for lg in model(x)])
    t, counts, margin = thresholds_for_fractions(s, [0.4, 0.3, 0.3])
    assert margin > 1e-6 and (counts > 0).all()  # the graphs' confidences differ from torch's by ~1e-8
    assert infer_tool.main([str(exported), *paths, "--thresholds", ",".join(map(repr, t[:-1])), "--out", str(out),
                            "--force"]) == 0
    rows = _results(out)
    ref = model.forward_adaptive(x, t)
    assert [r["exit"] - 1 for r in rows] == ref.exit_index.tolist() and ref.exit_counts == tuple(counts)
    assert [r["class"] for r in rows] == ref.logits.argmax(1).tolist()


def _status(capsys, fn, argv):
    code = fn(argv)
    return code, capsys.readouterr().err


def test_export_refusals_leave_nothing(run, tmp_path, capsys, monkeypatch):
    ckpt = str(run / "checkpoint.pth")
    out = tmp_path / "exp"
    cases = [
        ([str(tmp_path / "missing.pth"), "--out", str(out), "--format", "onnx"], "no such checkpoint file"),
        ([ckpt, "--out", str(out), "--format", "onnx", "--batch-sizes", "0,8"], "distinct positive integers"),
        ([ckpt, "--out", str(out), "--format", "onnx", "--batch-sizes", "4,a"], "comma-separated positive integers"),
        ([ckpt, "--out", str(out), "--format", "onnx", "--batch-sizes", "4,4"], "distinct positive integers"),
        ([ckpt, "--out", str(out), "--format", "onnx", "--thresholds", "0.5,0.5,0.5,0.5"], "--thresholds"),
        ([ckpt, "--out", str(out), "--format", "onnx", "--model", "dvt_tiny_t2t"], "does not fit"),
        ([ckpt, "--out", str(tmp_path / "a_file" / "exp"), "--format", "onnx"], "is not a folder"),
    ]
    (tmp_path / "a_file").write_text("not a folder")
    for argv, words in cases:
        code, err = _status(capsys, export_tool.main, argv)
        assert code == 2 and words in err, (argv, err)
        assert not out.exists()
    wrong = tmp_path / "other.json"
    curve = json.loads((run / "thresholds.json").read_text())["solvers"]["geometric"]["curve"]
    curve["gflops"] = [2 * g for g in curve["gflops"]]
    wrong.write_text(json.dumps(curve))
    code, err = _status(capsys, export_tool.main,
                        [ckpt, "--out", str(out), "--format", "onnx", "--thresholds", str(wrong)])
    assert code == 2 and "thresholds of another model" in err
    for argv in ([ckpt, "--out", str(out), "--format", "tflite"],
                 [ckpt, "--out", str(out), "--format", "onnx", "--dynamic-batch", "--batch-sizes", "1"],
                 [ckpt, "--out", str(out), "--format", "onnx", "--dyn"]):
        with pytest.raises(SystemExit) as exc:  # argparse: unknown choice, exclusive options, no abbreviations
            export_tool.main(argv)
        assert exc.value.code == 2
    assert not out.exists()

    def broken(*a, **k):
        raise RuntimeError("Unsupported: onnx::SomeOp")
    monkeypatch.setattr(torch.onnx, "export", broken)
    code, err = _status(capsys, export_tool.main, [ckpt, "--out", str(out), "--format", "onnx", "--dynamic-batch"])
    assert code == 2 and "the ONNX exporter cannot handle exit 1 of dvt_tiny_digits" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "other.json"]  # no DIR, no staging folder


def test_existing_dir_needs_force(exported, run, tmp_path, capsys):
    out = tmp_path / "exp"
    shutil.copytree(exported, out)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    argv = [str(run / "checkpoint.pth"), "--out", str(out), "--format", "onnx", "--dynamic-batch", "--no-verify"]
    code, err = _status(capsys, export_tool.main, argv)
    assert code == 2 and "holds an export; pass --force" in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    assert export_tool.main(argv + ["--force"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["batch"]["mode"] == "dynamic" and sorted(m["files"]) == ["exit1.onnx", "exit2.onnx", "exit3.onnx"]
    assert sorted(p.name for p in out.iterdir()) == ["exit1.onnx", "exit2.onnx", "exit3.onnx", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]

    (out / "notes.txt").write_text("mine")  # an export folder with a file the export did not write
    code, err = _status(capsys, export_tool.main, argv + ["--force"])
    assert code == 2 and "not an export (notes.txt)" in err and (out / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_bytes(b"x")
    code, err = _status(capsys, export_tool.main, argv[:2] + [str(other)] + argv[3:] + ["--force"])
    assert code == 2 and "not an export (data.bin)" in err and sorted(p.name for p in other.iterdir()) == ["data.bin"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_tool.main(argv[:2] + [str(empty)] + argv[3:]) == 0 and (empty / "manifest.json").is_file()


def test_default_out_is_a_new_folder_under_outputs(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [str(run / "checkpoint.pth"), "--format", "onnx", "--dynamic-batch", "--no-verify"]
    assert export_tool.main(argv) == 0
    (made,) = (tmp_path / "outputs" / "export").iterdir()
    assert made.name.endswith("-dvt_tiny_digits-onnx") and (made / "manifest.json").is_file()
    assert f"output: outputs/export/{made.name}" in capsys.readouterr().err
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    code, err = _status(capsys, export_tool.main, argv)  # the folder made for a failed export is removed
    assert code == 2 and "cannot handle" in err
    assert [p.name for p in (tmp_path / "outputs" / "export").iterdir()] == [made.name]


def test_infer_refusals_leave_no_results(exported, image_folder, tmp_path, capsys):
    out = tmp_path / "res.jsonl"
    img = str(next(image_folder.rglob("*.png")))
    bad_image = tmp_path / "broken.jpg"
    bad_image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases = [
        ([str(tmp_path), img, "--out", str(out)], "no manifest.json"),
        ([str(exported), img, "--thresholds", "0.5", "--out", str(out)], "thresholds"),
        ([str(exported), img, "--budget", "-1", "--out", str(out)], "budget"),
        ([str(exported), img, str(bad_image), "--thresholds", "0.5,0.5", "--out", str(out)],
         "broken.jpg: expected a decodable image file"),
        ([str(exported), str(tmp_path / "none.png"), "--out", str(out)], "no such image file"),
        ([str(exported), "--out", str(out)], "either image files or --image-folder"),
        ([str(exported), img, "--batch-size", "0", "--out", str(out)], "--batch-size must be >= 1"),
        ([str(exported), img, "--backend", "mindspore", "--out", str(out)], "runs mindir graphs"),
    ]
    for argv, words in cases:
        code, err = _status(capsys, infer_tool.main, argv)
        assert code == 2 and words in err, (argv, err)
        assert not out.exists() and not list(tmp_path.glob(".res.jsonl*"))
    damaged = tmp_path / "damaged"
    shutil.copytree(exported, damaged)
    graph = damaged / "exit2_b4.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    code, err = _status(capsys, infer_tool.main, [str(damaged), img, "--out", str(out)])
    assert code == 2 and "exit2_b4.onnx has sha256" in err and not out.exists()
    out.write_text("keep me\n")
    code, err = _status(capsys, infer_tool.main, [str(exported), img, "--budget", "1", "--out", str(out)])
    assert code == 2 and "exists; pass --force" in err and out.read_text() == "keep me\n"
    assert infer_tool.main([str(exported), img, "--budget", "1", "--out", str(out), "--force"]) == 0
    assert len(_results(out)) == 1


INFER_WITHOUT_FRAMEWORKS = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'mindspore', 'timm', 'torchvision'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['infer.py'] + sys.argv[1:]
try:
    runpy.run_path('tools/infer.py', run_name='__main__')
except SystemExit as e:
    assert e.code == 0, e.code
assert not [m for m in ('torch', 'mindspore', 'timm') if m in sys.modules]
print('NO FRAMEWORK')
"""


def test_infer_runs_with_only_common_and_onnxruntime(exported, image_folder, tmp_path):
    import subprocess
    out = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-c", INFER_WITHOUT_FRAMEWORKS, str(exported), "--image-folder",
                           str(image_folder), "--thresholds", "0.5,0.5", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NO FRAMEWORK" in proc.stdout and "12 images" in proc.stdout
    assert len(_results(out)) == 12


def test_missing_parent_folders_are_made_and_removed_when_the_export_fails(run, tmp_path, capsys, monkeypatch):
    """`--out exports/a-onnx` on a fresh checkout (README): the parents are made, as training makes --output;
    an export that fails removes the folders it made and nothing else."""
    argv = [str(run / "checkpoint.pth"), "--format", "onnx", "--dynamic-batch", "--no-verify", "--out"]
    out = tmp_path / "exports" / "nested" / "a-onnx"
    assert export_tool.main(argv + [str(out)]) == 0 and (out / "manifest.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["a-onnx"]  # no staging folder left beside it
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    code, err = _status(capsys, export_tool.main, argv + [str(tmp_path / "new" / "deeper" / "b-onnx")])
    assert code == 2 and "cannot handle" in err
    assert not (tmp_path / "new").exists()
    code, err = _status(capsys, export_tool.main, argv + [str(tmp_path / "exports" / "c" / "c-onnx")])
    assert code == 2 and sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["nested"]  # kept: not made
