"""Every command, both frameworks, fed bad input: exit status 2, a message that names the problem, and no output
file created or changed (directory listings and file hashes compared before and after).

Cases are run in-process through each command's `main(argv)` (argparse errors raise SystemExit(2)); they all fail
before any training step or graph compilation, so the whole table takes seconds. `python -m pytest
tests/test_bad_inputs.py -s` prints one row per case (command, input, status, first message line).
"""
import hashlib
import importlib.util
import os
import pickle
import shutil
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("convert_weights", "solve_thresholds", "benchmark", "flops", "bench_thresholds", "demo")
MS = ["--device", "CPU", "--cpu-threads", "0"]  # in-process MindSpore runs leave the kernel pool alone
FAST = ["--epochs", "1", "--max-steps-per-epoch", "1", "--solvers", "geometric", "--workers", "0"]


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _cli(name):
    if name in ("torch_train", "torch_eval"):
        from torch_impl import evaluate, train
        return train.main if name == "torch_train" else evaluate.main
    if name in ("ms_train", "ms_eval"):
        from ms_impl import evaluate, train
        return train.main if name == "ms_train" else evaluate.main
    return _tool(name).main


def _cifar(root: Path, labels=None, corrupt: bytes | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        lab = list(rng.integers(0, 10, 8)) if labels is None or name != "data_batch_2" else labels
        blob = pickle.dumps({b"data": rng.integers(0, 256, (len(lab), 3072), dtype=np.uint8), b"labels": lab})
        (folder / name).write_bytes(corrupt if corrupt is not None and name == "data_batch_4" else blob)
    return root


def _image_folder(root: Path, corrupt_val: bool) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 3)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    if corrupt_val:
        (root / "val" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, short_torch_run):
    """Bad (and a few good) input files, made once; every case checks that they are left as they were."""
    from ms_impl import create_model as ms_model
    from ms_impl import save_checkpoint as ms_save

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    good_pth = (short_torch_run / "checkpoint.pth").read_bytes()
    ms_save(ms_model("dvt_tiny_digits"), d / "good.ckpt")
    good_ckpt = (d / "good.ckpt").read_bytes()
    good_st = (d / "good.safetensors")
    from torch_impl import create_model, save_checkpoint
    save_checkpoint(create_model("dvt_tiny_digits"), good_st)
    npz = (short_torch_run / "calib_outputs.npz").read_bytes()
    files = {
        "empty.pth": b"", "trunc.pth": good_pth[:len(good_pth) // 2], "random.pth": rng.bytes(4096),
        "empty.ckpt": b"", "trunc.ckpt": good_ckpt[:len(good_ckpt) // 2], "random.ckpt": rng.bytes(4096),
        "random.safetensors": rng.bytes(4096), "trunc.safetensors": good_st.read_bytes()[:20000],
        "empty.npz": b"", "random.npz": rng.bytes(4096), "trunc.npz": npz[:len(npz) // 2],
        "invalid.yaml": b"epochs: [1, 2\n", "list.yaml": b"- 1\n- 2\n", "typed.yaml": b"epochs: many\n",
        "state.pth": good_pth,  # a weights file where a training state belongs
    }
    for name, blob in files.items():
        (d / name).write_bytes(blob)
    _cifar(d / "cifar_random", corrupt=rng.bytes(3000))
    _cifar(d / "cifar_label99", labels=[1, 99, 2])
    _cifar(d / "cifar_negative", labels=[0, -1, 3])
    _image_folder(d / "images_bad_val", corrupt_val=True)
    shutil.copytree(short_torch_run, d / "torch_run")  # an existing training run
    return d


# (id, command, argv ({in} = the inputs folder, {out} = a fresh folder in the workspace), message words)
CASES = [
    # --- both trainers -------------------------------------------------------------------------------------
    *[(f"{fw}-abbreviated-flag", f"{fw}_train", ["--epoch", "2"], "unrecognized arguments: --epoch 2")
      for fw in ("torch", "ms")],
    *[(f"{fw}-config-{kind}", f"{fw}_train", ["--config", "{in}/" + f"{kind}.yaml"], words)
      for fw in ("torch", "ms") for kind, words in (("invalid", "is not valid YAML"),
                                                     ("list", "expected a YAML mapping of flag names"),
                                                     ("typed", "'many' is not a valid value of --epochs"))],
    ("torch-initial-empty", "torch_train", ["--initial-checkpoint", "{in}/empty.pth"], "empty.pth: expected a PyTorch"),
    ("torch-initial-truncated", "torch_train", ["--initial-checkpoint", "{in}/trunc.pth"], "trunc.pth: expected a "
                                                                                            "PyTorch checkpoint"),
    ("torch-initial-random-st", "torch_train", ["--initial-checkpoint", "{in}/random.safetensors"],
     "random.safetensors: expected a .safetensors file"),
    ("ms-initial-empty", "ms_train", ["--initial-checkpoint", "{in}/empty.ckpt"], "empty.ckpt: expected a MindSpore"),
    ("ms-initial-random", "ms_train", ["--initial-checkpoint", "{in}/random.ckpt"], "random.ckpt: expected a "
                                                                                     "MindSpore checkpoint"),
    ("ms-initial-truncated-st", "ms_train", ["--initial-checkpoint", "{in}/trunc.safetensors"], "truncated"),
    ("torch-resume-truncated", "torch_train", ["--resume", "{in}/trunc.pth"], "expected a training state"),
    ("torch-resume-weights", "torch_train", ["--resume", "{in}/state.pth"], "it is not a training state"),
    ("ms-resume-random", "ms_train", ["--resume", "{in}/random.ckpt"], "expected a training state"),
    *[(f"{fw}-output-is-a-run", f"{fw}_train", ["--output", "{in}/torch_run"], "already holds the files of a run")
      for fw in ("torch", "ms")],
    ("torch-resume-auto-no-output", "torch_train", ["--resume", "auto"], "--resume auto continues the run in --output"),
    *[(f"{fw}-cifar-random-batch", f"{fw}_train", ["--dataset", "cifar10", "--data-dir", "{in}/cifar_random"],
       "data_batch_4: expected a CIFAR python batch") for fw in ("torch", "ms")],
    *[(f"{fw}-cifar-label-{kind}", f"{fw}_train", ["--dataset", "cifar10", "--data-dir", "{in}/cifar_" + kind],
       f"data_batch_2: 1 label(s) outside [0, 10) (sample 1 has label {label})")
      for fw in ("torch", "ms") for kind, label in (("label99", 99), ("negative", -1))],
    *[(f"{fw}-imagefolder-corrupt-val", f"{fw}_train", ["--dataset", "imagefolder", "--data-dir", "{in}/images_bad_val",
                                                        "--calib-size", "4"],
       "images_bad_val/val/b/1.png: expected a decodable image") for fw in ("torch", "ms")],
    # --- both evaluators -----------------------------------------------------------------------------------
    *[(f"torch-eval-{kind}", "torch_eval", ["--checkpoint", "{in}/" + name], words) for kind, name, words in (
        ("empty", "empty.pth", "the file is empty"), ("truncated", "trunc.pth", "trunc.pth: expected a PyTorch"),
        ("random", "random.pth", "random.pth: expected a PyTorch"),
        ("random-st", "random.safetensors", "expected a .safetensors file"))],
    *[(f"ms-eval-{kind}", "ms_eval", ["--checkpoint", "{in}/" + name], words) for kind, name, words in (
        ("empty", "empty.ckpt", "the file is empty"), ("truncated", "trunc.ckpt", "trunc.ckpt: expected a MindSpore"),
        ("random", "random.ckpt", "random.ckpt: expected a MindSpore"), ("truncated-st", "trunc.safetensors",
                                                                         "truncated"))],
    *[(f"{fw}-eval-into-training-run", f"{fw}_eval", ["--checkpoint", "{in}/torch_run/checkpoint.pth" if fw == "torch"
                                                       else "{in}/good.ckpt", "--output", "{in}/torch_run", "--force"],
       "is a training run's folder") for fw in ("torch", "ms")],
    *[(f"{fw}-eval-abbreviated", f"{fw}_eval", ["--use-em"], "unrecognized arguments: --use-em") for fw in ("torch", "ms")],
    # --- converter ---------------------------------------------------------------------------------------
    *[(f"convert-{name}", "convert_weights", ["{in}/" + name, "{out}/w." + dst], words) for name, dst, words in (
        ("empty.pth", "ckpt", "the file is empty"), ("trunc.pth", "safetensors", "expected a PyTorch checkpoint"),
        ("random.pth", "ckpt", "expected a PyTorch checkpoint"), ("random.ckpt", "pth", "expected a MindSpore"),
        ("trunc.ckpt", "safetensors", "expected a MindSpore"), ("random.safetensors", "pth", "expected a .safetensors"),
        ("trunc.safetensors", "ckpt", "truncated"))],
    ("convert-abbreviated", "convert_weights", ["{in}/good.ckpt", "{out}/w.pth", "--dt", "fp16"],
     "unrecognized arguments: --dt"),
    # --- threshold solver --------------------------------------------------------------------------------
    *[(f"solve-{name}", "solve_thresholds", ["{in}/" + name, "--out", "{out}/t"], words) for name, words in (
        ("empty.npz", "the file is empty"), ("random.npz", "not a readable .npz archive"),
        ("trunc.npz", "not a readable .npz archive"))],
    ("solve-into-training-run", "solve_thresholds", ["{in}/torch_run/test_outputs.npz", "--out", "{in}/torch_run",
                                                     "--force"], "is a training run's folder"),
    ("solve-abbreviated", "solve_thresholds", ["{in}/torch_run/test_outputs.npz", "--crit", "entropy"],
     "unrecognized arguments: --crit"),
    # --- benchmark and the other tools -------------------------------------------------------------------
    ("benchmark-unknown-model", "benchmark", ["--models", "dvt_t2t_vit_13", "--out", "{out}/b"],
     "unknown model 'dvt_t2t_vit_13'; did you mean"),
    ("benchmark-bad-mixture", "benchmark", ["--models", "dvt_tiny_deit_2exit", "--mixtures", "0.5/0.6", "--out",
                                            "{out}/b"], "must be non-negative fractions that sum to 1"),
    ("benchmark-mixture-length", "benchmark", ["--models", "dvt_tiny_deit_2exit", "--mixtures", "0.2/0.3/0.5",
                                               "--out", "{out}/b"], "do not have 2 fractions"),
    ("benchmark-bad-kernels", "benchmark", ["--kernels", "slow", "--out", "{out}/b"], "--kernels takes fast, default"),
    ("benchmark-truncated-checkpoint", "benchmark", ["--framework", "torch", "--models", "dvt_tiny_digits",
                                                     "--checkpoint", "{in}/trunc.pth", "--batch-sizes", "1",
                                                     "--warmup", "0", "--repeat", "1", "--out", "{out}/b"],
     "trunc.pth: expected a PyTorch checkpoint"),
    ("benchmark-abbreviated", "benchmark", ["--batch-size", "2"], "unrecognized arguments: --batch-size"),
    ("flops-abbreviated", "flops", ["--mod", "dvt_tiny_digits"], "unrecognized arguments: --mod"),
    ("bench-thresholds-abbreviated", "bench_thresholds", ["--rep", "1"], "unrecognized arguments: --rep"),
    ("demo-abbreviated", "demo", ["--rep", "1"], "unrecognized arguments: --rep"),
]


def _snapshot(*roots: Path) -> dict:
    """Relative path -> sha256 (folders -> 'dir') of everything under `roots`."""
    out = {}
    for root in roots:
        for dirpath, dirs, names in os.walk(root):
            for d in dirs:
                out[os.path.relpath(os.path.join(dirpath, d), root.parent) + "/"] = "dir"
            for n in names:
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, root.parent)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(autouse=True)
def _keep_mindspore_mode():
    mode = ms.get_context("mode")
    yield
    ms.set_context(mode=mode)


@pytest.mark.parametrize("case, command, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, command, argv, words, inputs, tmp_path,
                                                             monkeypatch, capsys):
    work = tmp_path / "work"  # the current directory: default output folders (outputs/...) would appear here
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [a.replace("{in}", str(inputs)).replace("{out}", str(work)) for a in argv]
    if command.endswith("_train"):
        argv = FAST + argv
    if command.startswith("ms_"):
        argv = MS + argv
    if command.endswith("_eval") and "--checkpoint" not in argv:
        argv = ["--checkpoint", str(inputs / "good.safetensors")] + argv
    before = _snapshot(inputs, work)
    try:
        status = _cli(command)(argv)
    except SystemExit as stop:  # argparse
        status = stop.code
    err = capsys.readouterr().err
    first = next((line for line in err.splitlines() if "error" in line), err.strip()[:200])
    print(f"| {case} | {command} | {status} | {first.strip()[:160]} |")
    assert status == 2, err
    assert words in err, err
    assert "Traceback" not in err
    assert _snapshot(inputs, work) == before  # nothing created, nothing changed


def test_random_bytes_in_a_cifar_batch_never_escape_as_memory_or_overflow_errors(tmp_path):
    """300 random files (and a memo index that would allocate gigabytes): always a BadFileError, at once."""
    from common.data.cifar import read_cifar_batch
    from common.readers import BadFileError

    path = tmp_path / "data_batch_1"
    blobs = [np.random.default_rng(seed).bytes(int(np.random.default_rng(seed).integers(1, 4000)))
             for seed in range(300)]
    blobs += [b"\x80\x02Nr\xff\xff\xff\x0f.", pickle.dumps(os.system), pickle.dumps([1, 2])]
    for blob in blobs:
        path.write_bytes(blob)
        with pytest.raises(BadFileError, match="expected a CIFAR python batch"):
            read_cifar_batch(path)
    data = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 4], b"filenames": [b"a.png", b"b.png"]}
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        images, labels = read_cifar_batch(path)
        assert images.shape == (2, 3072) and labels.tolist() == [3, 4]


def test_image_dtype_errors_name_float32():
    import torch

    import ms_impl
    from torch_impl import create_model

    model = create_model("dvt_tiny_deit").eval()
    ms_impl.configure(device="CPU", mode="pynative")
    net = ms_impl.create_model("dvt_tiny_deit")
    net.set_train(False)
    for dtype in ("float64", "float16", "uint8"):
        with pytest.raises(TypeError, match=f"expected a float32 image batch .* got {dtype}"):
            model(torch.zeros(1, 3, 32, 32, dtype=getattr(torch, dtype)))
        with pytest.raises(TypeError, match=f"expected a float32 image batch .* got {dtype}"):
            model.forward_adaptive(torch.zeros(1, 3, 32, 32, dtype=getattr(torch, dtype)), [0.5, 0.5])
        with pytest.raises(TypeError, match=f"expected a float32 image batch .* got {dtype}"):
            net(ms.Tensor(np.zeros((1, 3, 32, 32), dtype)))
    half = create_model("dvt_tiny_deit").eval().half()  # a cast model takes its own dtype
    assert half(torch.zeros(1, 3, 32, 32, dtype=torch.float16))[0].dtype == torch.float16
