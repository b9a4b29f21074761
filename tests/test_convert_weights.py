"""tools/convert_weights.py: formats, directions, validation, inference, bookkeeping, dtype, atomic writes,
and which framework each direction needs (subprocesses where the other framework cannot be imported).

Numerical equivalence of converted models across frameworks is the parity suite's job (parity/).
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import get_config, name_map, parameter_specs
from common.convert import (AmbiguousModelError, choose_config, convert, float32_to_bf16_bits, read_safetensors,
                            sha256_file, write_safetensors)
from common.naming import rename
from common.registry import _REGISTRY

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "convert_weights.py"
NAME = "dvt_tiny_t2t"


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("convert_weights", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cli, capsys, *args):
    status = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def canonical_weights(name=NAME, seed=0) -> dict:
    """Seeded numpy values for every parameter of a config (no framework needed)."""
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in parameter_specs(get_config(name))}


def save_st(path, tensors, config_name=None):
    meta = {"config": json.dumps(get_config(config_name).to_dict())} if config_name else {}
    write_safetensors(path, tensors, meta)
    return path


def files_in(directory) -> list:
    return sorted(p.name for p in Path(directory).iterdir())


def pth_state(path) -> dict:
    import torch
    obj = torch.load(path, map_location="cpu", weights_only=True)
    key = "model_state_dict" if "model_state_dict" in obj else "state_dict"
    return {k: v.float().numpy() for k, v in obj[key].items()}


def ckpt_state(path) -> dict:
    import mindspore as ms
    return {k: v.astype(ms.float32).asnumpy() for k, v in ms.load_checkpoint(str(path)).items()
            if isinstance(v, ms.Tensor)}


def assert_same(a: dict, b: dict):
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ---- one framework at a time (subprocesses that cannot import the other) ---------------------------------
BLOCKED_RUN = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError("import of " + name + " is blocked in this test", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["convert_weights.py"] + {args!r}
try:
    runpy.run_path({tool!r}, run_name="__main__")
finally:
    print("IMPORTED", sorted(m for m in {watched!r} if m in sys.modules), file=sys.stderr)
"""


def run_blocked(blocked, *args):
    code = BLOCKED_RUN.format(blocked=tuple(blocked), args=[str(a) for a in args], tool=str(TOOL),
                              watched=("torch", "mindspore", "timm", "torchvision"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_safetensors_to_ckpt_needs_no_torch(tmp_path):
    src = save_st(tmp_path / "w.safetensors", canonical_weights())
    proc = run_blocked(("torch", "timm", "torchvision"), src, tmp_path / "w.ckpt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTED ['mindspore']" in proc.stderr
    assert f"inferred model: {NAME} (canonical naming)" in proc.stdout
    want = rename(canonical_weights(), get_config(NAME), "canonical", "mindspore")
    assert_same(ckpt_state(tmp_path / "w.ckpt"), want)


def test_pth_to_safetensors_needs_no_mindspore(tmp_path):
    import torch
    ref = rename(canonical_weights(), get_config(NAME), "canonical", "reference")
    torch.save({"model_state_dict": {k: torch.from_numpy(v) for k, v in ref.items()}}, tmp_path / "r.pth")
    proc = run_blocked(("mindspore",), tmp_path / "r.pth", tmp_path / "w.safetensors", "--naming", "mindspore")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTED ['timm', 'torch', 'torchvision']" in proc.stderr or "IMPORTED ['torch']" in proc.stderr
    tensors, meta = read_safetensors(tmp_path / "w.safetensors")
    assert meta["naming"] == "mindspore" and json.loads(meta["config"])["name"] == NAME
    assert_same(tensors, rename(canonical_weights(), get_config(NAME), "canonical", "mindspore"))


def test_safetensors_to_safetensors_needs_no_framework(tmp_path):
    src = save_st(tmp_path / "a.safetensors", canonical_weights())
    proc = run_blocked(("torch", "mindspore", "timm", "torchvision"), src, tmp_path / "b.safetensors",
                       "--naming", "reference", "--dtype", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTED []" in proc.stderr and "dtype:      bfloat16" in proc.stdout
    # and back to fp32 where numpy has no bfloat16 type at all (no ml_dtypes): the raw reader
    proc = run_blocked(("torch", "mindspore", "timm", "torchvision", "ml_dtypes"), tmp_path / "b.safetensors",
                       tmp_path / "c.safetensors")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "inferred model: dvt_tiny_t2t (reference naming; the file's embedded config)" in proc.stdout
    bits = {k: float32_to_bf16_bits(v) for k, v in canonical_weights().items()}
    want = {k: (b.astype(np.uint32) << 16).view(np.float32) for k, b in bits.items()}
    assert_same(read_safetensors(tmp_path / "c.safetensors")[0], want)


# ---- directions, containers, namings -----------------------------------------------------------------------
def test_every_format_and_naming_round_trip_is_bit_exact(cli, capsys, tmp_path):
    """.pth -> .ckpt -> .safetensors (reference) -> .safetensors (mindspore) -> .pth (reference) -> .pth."""
    import torch
    w = canonical_weights()
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in w.items()}}, tmp_path / "0.pth")
    chain = [("1.ckpt", []), ("2.safetensors", ["--naming", "reference"]), ("3.safetensors", ["--naming", "mindspore"]),
             ("4.pth.tar", ["--naming", "reference"]), ("5.pt", [])]
    prev = tmp_path / "0.pth"
    for name, extra in chain:
        status, out, err = run(cli, capsys, prev, tmp_path / name, *extra)
        assert status == 0, err
        prev = tmp_path / name
    assert_same(pth_state(tmp_path / "5.pt"), w)
    assert torch.load(tmp_path / "4.pth.tar", weights_only=True).keys() >= {"model_state_dict", "config"}
    assert_same(read_safetensors(tmp_path / "2.safetensors")[0], rename(w, get_config(NAME), "canonical", "reference"))


def test_outputs_load_in_both_frameworks(cli, capsys, tmp_path):
    import ms_impl
    import torch_impl
    src = save_st(tmp_path / "w.safetensors", canonical_weights())
    namings = {"m.ckpt": [], "t.pth": [], "ref.pth": ["--naming", "reference"],
               "ms.safetensors": ["--naming", "mindspore"]}
    for dst, extra in namings.items():
        assert run(cli, capsys, src, tmp_path / dst, *extra)[0] == 0
    torch_impl.create_model(NAME, checkpoint_path=tmp_path / "t.pth")
    torch_impl.create_model(NAME, checkpoint_path=tmp_path / "ref.pth")
    ms_impl.create_model(NAME, checkpoint_path=tmp_path / "m.ckpt")
    ms_impl.create_model(NAME, checkpoint_path=tmp_path / "ms.safetensors")


def test_summary_and_checksum(cli, capsys, tmp_path):
    src = save_st(tmp_path / "w.safetensors", canonical_weights())
    status, out, _ = run(cli, capsys, src, tmp_path / "w.pth")
    assert status == 0
    cfg = get_config(NAME)
    assert f"tensors:    {len(name_map(cfg, 'canonical'))}" in out
    assert f"parameters: {sum(s.numel for s in parameter_specs(cfg)):,}" in out
    assert "dtype:      float32" in out and f"sha256:     {sha256_file(tmp_path / 'w.pth')}" in out
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "w.pth").stat().st_mode & 0o777 == 0o666 & ~mask


def test_reference_training_container_drops_optimizer_state_and_counts_it(cli, capsys, tmp_path):
    import torch
    w = canonical_weights()
    ref_named = rename(w, get_config(NAME), "canonical", "reference")
    ref = {f"module.{k}": torch.from_numpy(v) for k, v in ref_named.items()}
    ema = {f"module.{k}": torch.from_numpy(v + 1) for k, v in ref_named.items()}
    opt = {"state": {i: {"exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2), "step": torch.tensor(3.0)}
                     for i in range(4)}, "param_groups": [{"lr": 0.1}]}
    torch.save({"state_dict": ref, "state_dict_ema": ema, "optimizer": opt, "epoch": 7, "args": {"lr": 0.1}},
               tmp_path / "ckpt.pth.tar")
    status, out, err = run(cli, capsys, tmp_path / "ckpt.pth.tar", tmp_path / "live.safetensors")
    assert status == 0, err
    assert "dropped:    12 tensors of optimizer/training state" in out
    assert f"dropped:    {len(ema)} tensors of unused weights in 'state_dict_ema' (--ema" in out
    assert "not copied: epoch, args" in out and "reference names" in out
    assert_same(read_safetensors(tmp_path / "live.safetensors")[0], w)
    status, out, _ = run(cli, capsys, tmp_path / "ckpt.pth.tar", tmp_path / "ema.safetensors", "--ema")
    assert status == 0 and "container 'state_dict_ema'" in out
    assert_same(read_safetensors(tmp_path / "ema.safetensors")[0], {k: v + 1 for k, v in w.items()})


def test_pickled_objects_need_trust(cli, capsys, tmp_path):
    """timm's training checkpoints carry `args` (argparse.Namespace): refused unless --trust-pickle."""
    import argparse

    import torch
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in canonical_weights().items()},
                "args": argparse.Namespace(lr=0.1), "epoch": 3}, tmp_path / "timm.pth.tar")
    status, _, err = run(cli, capsys, tmp_path / "timm.pth.tar", tmp_path / "w.ckpt")
    assert status == 2 and "--trust-pickle" in err and files_in(tmp_path) == ["timm.pth.tar"]
    status, out, _ = run(cli, capsys, tmp_path / "timm.pth.tar", tmp_path / "w.ckpt", "--trust-pickle")
    assert status == 0 and "not copied: args, epoch" in out


def test_timm_style_model_key(cli, capsys, tmp_path):
    import torch
    torch.save({"model": {k: torch.from_numpy(v) for k, v in canonical_weights().items()}, "epoch": 1},
               tmp_path / "timm.pth")
    status, out, _ = run(cli, capsys, tmp_path / "timm.pth", tmp_path / "w.ckpt")
    assert status == 0 and "container 'model'" in out


def test_mindspore_training_checkpoint_drops_adam_state(cli, capsys, tmp_path):
    import mindspore as ms
    w = rename(canonical_weights(), get_config(NAME), "canonical", "mindspore")
    some = next(iter(w))
    entries = [{"name": k, "data": ms.Tensor(v)} for k, v in w.items()]
    entries += [{"name": f"{slot}.{some}", "data": ms.Tensor(w[some])}
                for slot in ("adam_m", "adam_v", "exp_avg", "max_exp_avg_sq")]
    entries += [{"name": "state_step", "data": ms.Tensor(np.array(3, np.int32))},
                {"name": "global_step", "data": ms.Tensor(np.array([10], np.int32))},
                {"name": "learning_rate", "data": ms.Tensor(np.array([0.1], np.float32))}]
    ms.save_checkpoint(entries, str(tmp_path / "train.ckpt"))
    status, out, err = run(cli, capsys, tmp_path / "train.ckpt", tmp_path / "w.safetensors")
    assert status == 0, err
    assert "dropped:    7 tensors of optimizer/training state" in out
    assert_same(read_safetensors(tmp_path / "w.safetensors")[0], canonical_weights())


# ---- validation and errors: nothing written ------------------------------------------------------------
def test_mismatch_lists_every_problem_and_writes_nothing(cli, capsys, tmp_path):
    w = canonical_weights()
    del w["exits.2.head.bias"]
    w["exits.0.extra.weight"] = np.zeros(3, np.float32)
    w["exits.1.norm.weight"] = np.zeros(7, np.float32)
    src = save_st(tmp_path / "bad.safetensors", w)
    status, out, err = run(cli, capsys, src, tmp_path / "out.ckpt", "--model", NAME)
    assert status == 2 and out == ""
    assert "nothing written" in err and "1 missing" in err and "exits.2.head.bias" in err
    assert "1 unexpected" in err and "exits.0.extra.weight" in err
    assert "1 mis-shaped" in err and "exits.1.norm.weight: (64,) vs (7,)" in err
    assert files_in(tmp_path) == ["bad.safetensors"]
    status, _, err = run(cli, capsys, src, tmp_path / "out.ckpt")  # inferred: the closest config is named
    assert status == 2 and f"closest is {NAME!r}" in err and files_in(tmp_path) == ["bad.safetensors"]


def test_refuses_to_overwrite_without_force(cli, capsys, tmp_path):
    src = save_st(tmp_path / "w.safetensors", canonical_weights())
    (tmp_path / "out.safetensors").write_bytes(b"keep me")
    status, _, err = run(cli, capsys, src, tmp_path / "out.safetensors")
    assert status == 2 and "--force" in err and (tmp_path / "out.safetensors").read_bytes() == b"keep me"
    assert run(cli, capsys, src, tmp_path / "out.safetensors", "--force")[0] == 0
    assert_same(read_safetensors(tmp_path / "out.safetensors")[0], canonical_weights())


def test_failed_write_leaves_no_file(cli, capsys, tmp_path, monkeypatch):
    import safetensors.numpy

    def boom(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    src = tmp_path / "w.pth"
    import torch
    torch.save({k: torch.from_numpy(v) for k, v in canonical_weights().items()}, src)
    status, _, err = run(cli, capsys, src, tmp_path / "out.safetensors")
    assert status == 2 and "disk full" in err
    assert files_in(tmp_path) == ["w.pth"]


@pytest.mark.parametrize("args, message", [
    (["x.safetensors", "y.onnx"], "unknown checkpoint format"),
    (["x.safetensors", "y.ckpt", "--naming", "canonical"], "mindspore or msref names"),
    (["x.safetensors", "y.pth", "--naming", "mindspore"], "canonical or reference"),
    (["absent.safetensors", "y.pth"], "no such file"),
    (["x.safetensors", "y.pth", "--model", "dvt_tiny_tt"], "did you mean"),
])
def test_usage_errors(cli, capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    save_st(tmp_path / "x.safetensors", canonical_weights())
    status, _, err = run(cli, capsys, *args)
    assert status == 2 and message in err
    assert files_in(tmp_path) == ["x.safetensors"]


def test_reference_naming_needs_at_most_three_exits(cli, capsys, tmp_path):
    src = save_st(tmp_path / "w.safetensors", canonical_weights("dvt_tiny_deit_4exit"))
    status, _, err = run(cli, capsys, src, tmp_path / "w.pth", "--naming", "reference")
    assert status == 2 and "1-3 exits" in err and files_in(tmp_path) == ["w.safetensors"]


# ---- choosing the config -----------------------------------------------------------------------------
@pytest.fixture
def lookalike():
    """A registered config with the same tensors as NAME (only the LayerNorm eps differs)."""
    _REGISTRY["zz_lookalike"] = lambda: get_config(NAME).replace(name="zz_lookalike", norm_eps=1e-6)
    yield "zz_lookalike"
    del _REGISTRY["zz_lookalike"]


def test_ambiguous_inference_lists_candidates_and_writes_nothing(cli, capsys, tmp_path, lookalike):
    src = save_st(tmp_path / "w.safetensors", canonical_weights())
    status, out, err = run(cli, capsys, src, tmp_path / "w.ckpt")
    assert status == 2 and out == "" and "2 registered models fit" in err
    assert f"{NAME} (canonical naming)" in err and f"{lookalike} (canonical naming)" in err
    assert files_in(tmp_path) == ["w.safetensors"]
    status, out, _ = run(cli, capsys, src, tmp_path / "w.ckpt", "--model", lookalike)
    assert status == 0 and f"model: {lookalike}" in out
    save_st(tmp_path / "e.safetensors", canonical_weights(), config_name=lookalike)  # the file says which
    status, out, _ = run(cli, capsys, tmp_path / "e.safetensors", tmp_path / "e.ckpt")
    assert status == 0 and f"inferred model: {lookalike} (canonical naming; the file's embedded config)" in out
    with pytest.raises(AmbiguousModelError):
        choose_config({k: v.shape for k, v in canonical_weights().items()})


def test_inferred_from_bare_reference_names(cli, capsys, tmp_path):
    ref = rename(canonical_weights("t2t_vit_tiny"), get_config("t2t_vit_tiny"), "canonical", "reference")
    src = save_st(tmp_path / "orig.safetensors", ref)  # single model: the original T2T-ViT layout, no prefix
    status, out, _ = run(cli, capsys, src, tmp_path / "w.ckpt")
    assert status == 0 and "inferred model: t2t_vit_tiny (reference naming)" in out


def test_fine_tuned_head_uses_the_embedded_config(cli, capsys, tmp_path):
    """A config override (7 classes) is not registered; the file's own config makes it convertible."""
    cfg = get_config(NAME, num_classes=7)
    rng = np.random.default_rng(1)
    w = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in parameter_specs(cfg)}
    write_safetensors(tmp_path / "ft.safetensors", w, {"config": json.dumps(cfg.to_dict())})
    status, out, _ = run(cli, capsys, tmp_path / "ft.safetensors", tmp_path / "ft.ckpt")
    assert status == 0 and "differs from the registered one in num_classes=7" in out
    status, out, _ = run(cli, capsys, tmp_path / "ft.safetensors", tmp_path / "ft2.ckpt", "--model", NAME)
    assert status == 0 and "num_classes=7" in out
    write_safetensors(tmp_path / "bare.safetensors", w, {})  # without it: the closest config and the problems
    status, _, err = run(cli, capsys, tmp_path / "bare.safetensors", tmp_path / "bare.ckpt")
    assert status == 2 and "mis-shaped" in err and "exits.0.head.weight: (10, 64) vs (7, 64)" in err


# ---- dtypes ---------------------------------------------------------------------------------------
def test_bf16_rounding_matches_torch():
    import torch
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 10.0 ** np.arange(-20, 20, 4).repeat(1000)
    ours = float32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("dst", ["w.safetensors", "w.pth", "w.ckpt"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_dtype_option(cli, capsys, tmp_path, dst, dtype):
    import torch
    w = canonical_weights("t2t_vit_tiny")
    src = save_st(tmp_path / "src.safetensors", w)
    status, out, err = run(cli, capsys, src, tmp_path / dst, "--dtype", dtype)
    assert status == 0, err
    assert f"dtype:      {'float16' if dtype == 'fp16' else 'bfloat16'}" in out
    tdtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    expected = {k: torch.from_numpy(v).to(tdtype).float().numpy() for k, v in w.items()}
    if dst.endswith(".ckpt"):
        got = rename(ckpt_state(tmp_path / dst), get_config("t2t_vit_tiny"), "mindspore", "canonical")
    elif dst.endswith(".pth"):
        got = pth_state(tmp_path / dst)
    else:
        got = {k: v.astype(np.float32) for k, v in read_safetensors(tmp_path / dst)[0].items()}
    assert_same(got, expected)
    back = tmp_path / "back.safetensors"  # and back to fp32 (the default): exact
    assert run(cli, capsys, tmp_path / dst, back)[0] == 0
    assert_same(read_safetensors(back)[0], expected)


def test_convert_library_keeps_spec_order_and_reports_source_dtypes():
    w = canonical_weights()
    conv = convert({"state_dict": dict(reversed(list(w.items())))}, naming="mindspore")
    assert list(conv.tensors) == list(name_map(get_config(NAME), "mindspore").values())
    assert conv.src_dtypes == {"float32": len(w)} and conv.container == "state_dict"


def test_bf16_safetensors_is_standard_and_readable_without_ml_dtypes(tmp_path):
    """Our bf16 writer against the official reader (safetensors.torch), and our numpy-only reader (used where
    numpy has no bfloat16) against it."""
    from safetensors.torch import load_file

    w = canonical_weights("t2t_vit_tiny")
    write_safetensors(tmp_path / "b.safetensors", w, {"naming": "canonical"}, dtype="bf16")
    official = {k: v.float().numpy() for k, v in load_file(str(tmp_path / "b.safetensors")).items()}
    raw, meta = read_safetensors(tmp_path / "b.safetensors")
    assert meta == {"naming": "canonical"}
    assert_same(raw, official)
