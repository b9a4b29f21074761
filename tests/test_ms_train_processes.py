"""ms_impl/train.py as real processes: a 2-worker msrun data-parallel run on 127.0.0.1 (MindSpore's CPU
dynamic cluster), SIGKILL + --resume auto, and the script's exit status on bad data."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def test_sigkill_mid_run_then_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(TRAIN), *FAST, "--mode", "pynative", "--epochs", "5", "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "log.csv"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_text().splitlines()) >= 3:  # header + 2 epochs
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    meta = load_train_state(out / "last_state.ckpt")["meta"]  # whatever the moment of the kill, both files are whole
    assert 2 <= meta["epoch"] < 5
    create_model("dvt_tiny_deit", checkpoint_path=out / "checkpoint.ckpt")
    assert int(read_checkpoint(out / "checkpoint.ckpt")["epoch"]) in (meta["epoch"], meta["epoch"] + 1)
    assert len(log.read_text().splitlines()) - 1 in (meta["epoch"], meta["epoch"] - 1)
    resumed = subprocess.run(cmd + ["--resume", "auto"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'last_state.ckpt'} after epoch {meta['epoch']}" in resumed.stdout
    epochs = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert epochs == [str(e) for e in range(1, 6)]
    assert load_summary(out / "summary.json")["weights"]["epochs_completed"] == 5


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "cifar100", "--data-dir", "/nonexistent/cifar"], "no CIFAR-100 python folder at"),
])
def test_script_exit_status_and_message(tmp_path, extra, message):
    proc = subprocess.run([sys.executable, str(TRAIN), *FAST, "--output", str(tmp_path / "r"), *extra],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
