"""ms_impl/train.py as real processes: a 2-worker msrun data-parallel run on 127.0.0.1 (MindSpore's CPU
dynamic cluster), SIGKILL + --resume auto, and the script's exit status on bad data."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.training import load_summary
from ms_impl import create_model
from ms_impl.checkpoint import read_checkpoint
from ms_impl.train_state import load_train_state

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "ms_impl" / "train.py"
FAST = ["--model", "dvt_tiny_deit", "--batch-size", "16", "--max-steps-per-epoch", "2", "--solvers", "geometric",
        "--workers", "0", "--eval-batch-size", "256", "--warmup-epochs", "1", "--device", "CPU"]


def _env(**extra):
    # msrun starts `python` from PATH: the interpreter running the tests must come first.
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.update(extra)
    return env


def _compile_cache(folder) -> dict:
    """Environment of MindSpore's front-end graph compile cache in `folder`. Its files are numbered in compile
    order and checked only against the hash of the Python sources, so one folder serves only runs that compile
    the same graphs in the same order, one process at a time."""
    return {"MS_COMPILER_CACHE_ENABLE": "1", "MS_COMPILER_CACHE_PATH": str(folder)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_msrun_two_cpu_workers(tmp_path):
    out, logs = tmp_path / "dp", tmp_path / "logs"
    cmd = [os.path.join(os.path.dirname(sys.executable), "msrun"), "--worker_num=2", "--local_worker_num=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "--join=True", f"--log_dir={logs}",
           "python", str(TRAIN), *FAST, "--epochs", "2", "--output", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=420)
    seconds = time.perf_counter() - start
    rank0, rank1 = (logs / "worker_0.log").read_text(), (logs / "worker_1.log").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + rank0[-3000:] + rank1[-3000:]
    print(f"msrun smoke: {seconds:.0f} s")
    assert "2 epochs x 2 steps of 16 x 2 on CPU" in rank0  # two data-parallel workers
    assert rank0.count("epoch 2/2") == 1 and rank0.count("done in") == 1
    assert "epoch 1/2" not in rank1 and "done in" not in rank1  # only rank 0 reports and writes
    s = load_summary(out / "summary.json")
    assert s["framework"] == "mindspore" and s["weights"]["epochs_completed"] == 2 and len(s["top1"]["test"]) == 3
    meta = load_train_state(out / "last_state.ckpt")["meta"]
    assert meta["num_updates"] == 4 and meta["opt_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dp", "logs"]  # nothing outside --output and the logs
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


DEFAULT_SHORT = ["--epochs", "3", "--max-steps-per-epoch", "2", "--solvers", "geometric"]  # the default run, shortened


def _tensors(path) -> dict:
    return {k: v.asnumpy() for k, v in read_checkpoint(path).items() if hasattr(v, "asnumpy")}


def _log_rows(path):
    lines = path.read_text().splitlines()
    keep = [i for i, name in enumerate(lines[0].split(",")) if name not in ("img_per_s", "epoch_seconds")]
    return [[line.split(",")[i] for i in keep] for line in lines]


def test_sigkill_in_epoch_2_then_resume_auto_is_bitwise_identical(tmp_path):
    """The default run (dvt_tiny_digits, GRAPH mode, --cpu-threads 1), shortened: killed with SIGKILL right after
    epoch 1, resumed with --resume auto, it ends with exactly the tensors of an uninterrupted run.

    The three processes share MindSpore's graph compile cache (MS_COMPILER_CACHE_*, one folder of this test,
    one process at a time): the killed run compiles the train step, the resumed one loads it and compiles
    the evaluation graphs, the uninterrupted one loads them all (60 s of compiling per process otherwise).
    A graph loaded from the cache that differed from a compiled one would make the runs differ, not agree."""
    straight, out = tmp_path / "straight", tmp_path / "run"
    cache = _compile_cache(tmp_path / "ms_compile_cache")
    cmd = [sys.executable, str(TRAIN), *DEFAULT_SHORT, "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(**cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    log = out / "log.csv"
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_text().splitlines()) >= 2:  # header + epoch 1: now in epoch 2
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    meta = load_train_state(out / "last_state.ckpt")["meta"]  # whatever the moment of the kill, both files are whole
    assert meta["epoch"] in (1, 2) and not (out / "summary.json").exists()
    create_model("dvt_tiny_digits", checkpoint_path=out / "checkpoint.ckpt")
    resumed = subprocess.run(cmd + ["--resume", "auto"], cwd=tmp_path, env=_env(**cache), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'last_state.ckpt'} after epoch {meta['epoch']}" in resumed.stdout
    assert "continues statistically" not in resumed.stderr  # the default recipe has no dropout anywhere
    plain = subprocess.run([sys.executable, str(TRAIN), *DEFAULT_SHORT, "--output", str(straight)], cwd=tmp_path,
                           env=_env(**cache), capture_output=True, text=True, timeout=900)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    a, b = load_train_state(straight / "last_state.ckpt"), load_train_state(out / "last_state.ckpt")
    assert a["meta"]["num_updates"] == b["meta"]["num_updates"] == 6
    for part in ("model", "optimizer"):
        assert a[part].keys() == b[part].keys()
        different = [k for k in a[part] if not np.array_equal(a[part][k], b[part][k])]
        assert not different, f"{len(different)} of {len(a[part])} {part} tensors differ, e.g. {different[:3]}"
    wa, wb = _tensors(straight / "checkpoint.ckpt"), _tensors(out / "checkpoint.ckpt")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_summary(straight / "summary.json"), load_summary(out / "summary.json")
    assert sa["top1"] == sb["top1"] and sa["curve"] == sb["curve"]
    assert _log_rows(straight / "log.csv") == _log_rows(out / "log.csv")
    epochs = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "cifar100", "--data-dir", "/nonexistent/cifar"], "no CIFAR-100 python folder at"),
])
def test_script_exit_status_and_message(tmp_path, extra, message):
    proc = subprocess.run([sys.executable, str(TRAIN), *FAST, "--output", str(tmp_path / "r"), *extra],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
