"""torch_impl/train.py as real processes: 2-process torchrun (gloo on 127.0.0.1), and SIGKILL + --resume auto."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.training import load_summary
from torch_impl import create_model
from torch_impl.checkpoint import read_checkpoint
from torch_impl.train_state import load_train_state

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "torch_impl" / "train.py"
FAST = ["--model", "dvt_tiny_deit", "--batch-size", "16", "--max-steps-per-epoch", "2", "--solvers", "geometric",
        "--workers", "0", "--eval-batch-size", "256", "--warmup-epochs", "1"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(TRAIN), *FAST, "--epochs", "2", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "x 2 on cpu" in text  # 2 processes
    assert text.count("epoch 2/2") == 1 and text.count("done in") == 1  # only rank 0 reports
    s = load_summary(out / "summary.json")
    assert s["weights"]["epochs_completed"] == 2 and len(s["top1"]["test"]) == 3
    state = load_train_state(out / "last_state.pth")
    assert state["num_updates"] == 4 and len(state["rng"]) == 2  # both ranks' RNG states
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # nothing written outside --output
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_sigkill_mid_run_then_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(TRAIN), *FAST, "--epochs", "6", "--output", str(out)]
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
    state = load_train_state(out / "last_state.pth")  # whatever the moment of the kill, both files are whole
    assert 2 <= state["epoch"] < 6
    create_model("dvt_tiny_deit", checkpoint_path=out / "checkpoint.pth")
    assert read_checkpoint(out / "checkpoint.pth")["epoch"] in (state["epoch"], state["epoch"] + 1)
    assert len(log.read_text().splitlines()) - 1 in (state["epoch"], state["epoch"] - 1)
    resumed = subprocess.run(cmd + ["--resume", "auto"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'last_state.pth'} after epoch {state['epoch']}" in resumed.stdout
    epochs = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert epochs == [str(e) for e in range(1, 7)]
    assert load_summary(out / "summary.json")["weights"]["epochs_completed"] == 6


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "cifar100", "--data-dir", "/nonexistent/cifar"], "no CIFAR-100 python folder at"),
])
def test_script_exit_status_and_message(tmp_path, extra, message):
    proc = subprocess.run([sys.executable, str(TRAIN), *FAST, "--output", str(tmp_path / "r"), *extra],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
