"""tools/compare.py (the divergence finder) and tools/convert_weights.py --verify (the parity certificate), on
real checkpoint files of a tiny two-exit cascade in both frameworks."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from common.divergence import stage_names

torch = pytest.importorskip("torch")
ms = pytest.importorskip("mindspore")

ROOT = Path(__file__).resolve().parents[1]
NAME = "dvt_tiny_deit_2exit"


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare():
    return _tool("compare")


@pytest.fixture(scope="module")
def convert_cli():
    return _tool("convert_weights")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory, convert_cli):
    """A seeded torch checkpoint, its MindSpore conversion, and a copy with one weight of exit 1, block 1's MLP moved."""
    import torch_impl
    tmp = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    model = torch_impl.create_model(NAME)
    torch_impl.save_checkpoint(model, tmp / "a.pth")
    assert convert_cli.main([str(tmp / "a.pth"), str(tmp / "a.ckpt")]) == 0
    with torch.no_grad():
        model.exits[1].blocks[1].mlp.fc1.weight[0, 0] += 0.05
    torch_impl.save_checkpoint(model, tmp / "moved.pth")
    return tmp


def run(tool, capsys, *args):
    status = tool.main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_torch_against_its_mindspore_conversion(compare, files, capsys, tmp_path):
    out = tmp_path / "report"
    status, printed, err = run(compare, capsys, files / "a.pth", files / "a.ckpt", "--random", 4, "--out", out, "--dumps")
    assert status == 0, err
    assert "No stage diverges" in printed
    report = json.loads((out / "report.json").read_text())
    from common import get_config
    assert [s["stage"] for s in report["stages"]] == stage_names(get_config(NAME))
    assert (report["a"]["framework"], report["b"]["framework"], report["b"]["naming"]) == ("torch", "mindspore",
                                                                                          "mindspore")
    assert report["first_divergence"] is None
    assert all(e["top1_agreement"] == 1.0 and e["logits_max_abs"] < 1e-5 for e in report["exits"])
    assert report["exit_decisions"]["min_agreement"] == 1.0
    assert all(s["cosine"] > 0.9999999 for s in report["stages"])
    assert "# Divergence report" in (out / "report.md").read_text()
    # The dumps are TroubleShooter's layout; its own metrics agree with the report's.
    ts = pytest.importorskip("troubleshooter.migrator.diff_handler")
    dumps_a, dumps_b = sorted((out / "dumps" / "a").iterdir()), sorted((out / "dumps" / "b").iterdir())
    assert [p.name for p in dumps_a] == [p.name for p in dumps_b] == [f"{i:04d}_{s['stage']}.npy"
                                                                       for i, s in enumerate(report["stages"])]
    for row, pa, pb in zip(report["stages"], dumps_a, dumps_b):
        a64, b64 = np.load(pa).astype(np.float64), np.load(pb).astype(np.float64)
        _, ratio, cosine, (_, max_abs) = ts.cal_algorithm(a64, b64, 0.0, 1e-5, False)
        assert (ratio, max_abs) == (row["match_ratio"], row["max_abs"])
        assert cosine == pytest.approx(row["cosine"], abs=1e-12)


def test_first_divergence_is_where_the_weights_differ(compare, files, capsys, tmp_path):
    status, printed, err = run(compare, capsys, files / "a.pth", files / "moved.pth", "--random", 4,
                               "--out", tmp_path / "r")
    assert status == 1, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    first = report["first_divergence"]
    assert first["stage"] == "exit1.block1.output"  # exit 0 and exit 1's block 1 attention are untouched
    assert all(not s["diverged"] for s in report["stages"][:first["index"]])
    assert report["stages"][first["index"] - 1]["max_abs"] == 0.0  # same framework, same weights: bit-identical
    assert "First divergence: `exit1.block1.output`" in printed


def test_mixed_precision_run_of_one_file(compare, files, capsys, tmp_path):
    status, _, err = run(compare, capsys, files / "a.pth", files / "a.pth", "--b-precision", "bf16", "--random", 4,
                         "--out", tmp_path / "r")
    assert status == 1, err  # bfloat16 is not within 1e-5
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["b"]["precision"] == "bf16" and report["first_divergence"]["index"] == 0
    assert 1e-4 < report["exits"][1]["logits_max_abs"] < 0.5


def test_bad_input_writes_nothing(compare, files, capsys, tmp_path):
    out = tmp_path / "taken"  # an earlier comparison's folder
    out.mkdir()
    (out / "report.json").write_text("{}")
    status, _, err = run(compare, capsys, files / "a.pth", files / "a.ckpt", "--out", out)
    assert status == 2 and "--force" in err and (out / "report.json").read_text() == "{}"
    status, _, err = run(compare, capsys, files / "a.pth", files / "a.ckpt", "--b-precision", "fp16",
                         "--out", tmp_path / "x")
    assert status == 2 and "O1" in err
    status, _, err = run(compare, capsys, files / "a.pth", files / "a.pth", "--b-framework", "mindspore",
                         "--out", tmp_path / "x")
    assert status == 2 and "convert it first" in err
    assert not (tmp_path / "x").exists() and [p.name for p in out.iterdir()] == ["report.json"]


# ---- tools/convert_weights.py --verify ------------------------------------------------------------------------
def test_verified_conversion_writes_the_certificate(convert_cli, files, capsys, tmp_path):
    status, printed, err = run(convert_cli, capsys, files / "a.pth", tmp_path / "w.ckpt", "--verify")
    assert status == 0, err
    cert = json.loads((tmp_path / "w.ckpt.parity.json").read_text())
    assert cert["passed"] and cert["source"]["framework"] == "torch" and cert["converted"]["framework"] == "mindspore"
    assert all(e["logits_max_abs"] <= 1e-5 and e["top1_agreement"] == 1.0 for e in cert["exits"])
    assert cert["exit_decisions"]["agreement_min"] == 1.0 and set(cert["versions"]) >= {"torch", "mindspore"}
    assert "verified:" in printed
    # bfloat16 weights: checked against the source rounded the same way
    status, _, err = run(convert_cli, capsys, files / "a.ckpt", tmp_path / "w16.safetensors", "--dtype", "bf16",
                         "--verify")
    assert status == 0, err
    cert = json.loads((tmp_path / "w16.safetensors.parity.json").read_text())
    assert cert["source"]["weights"] == "rounded to bf16" and cert["converted"]["framework"] == "torch"


def test_a_conversion_that_changes_the_model_fails_and_writes_nothing(convert_cli, files, capsys, tmp_path,
                                                                    monkeypatch):
    real = convert_cli.write_target

    def corrupting(conv, path, fmt):  # a converter bug: one head weight lost its sign
        name = next(k for k in conv.tensors if k.endswith("exits.1.head.weight"))
        conv.tensors[name] = -conv.tensors[name]
        return real(conv, path, fmt)

    monkeypatch.setattr(convert_cli, "write_target", corrupting)
    status, _, err = run(convert_cli, capsys, files / "a.pth", tmp_path / "w.ckpt", "--verify")
    assert status == 2 and "does not reproduce" in err and "exit 1" in err
    assert list(tmp_path.iterdir()) == []
