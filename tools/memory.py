"""Peak training memory of one forward + backward step, without and with gradient checkpointing.

    python tools/memory.py                                       # dvt_t2t_vit_12, batch 32, torch, CPU
    python tools/memory.py --model dvt_t2t_vit_14 --batch 64 --device cuda
    python tools/memory.py --framework mindspore --batch 8       # Cell.recompute() on every block

Each setting runs in its own fresh process (peak memory is a per-process high-water mark), one after the
other, and the ratio is printed: the step is the DVT training objective (sum of the per-exit
cross-entropies) on random 224x224 images in train mode, `set_grad_checkpointing()` recomputing every
block of every exit in the backward pass. CPU: peak resident memory of the process (`ru_maxrss`) and its
growth over the built model (what the step itself needs); CUDA: `torch.cuda.max_memory_allocated`.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

from common import get_config  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _torch_step(name: str, batch: int, checkpointing: bool, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    import torch_impl
    from common.exits import per_exit
    torch.manual_seed(0)
    model = torch_impl.create_model(name).to(device).train()
    model.set_grad_checkpointing(checkpointing)
    cfg = model.config
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)
    base = _rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        start_alloc = torch.cuda.memory_allocated(device) / 2 ** 20
    start = time.perf_counter()
    loss = sum(F.cross_entropy(o, y) for o in per_exit(model(x)))
    loss.backward()
    seconds = time.perf_counter() - start
    out = dict(loss=float(loss), seconds=seconds, peak_rss_mib=_rss_mib(), model_rss_mib=base)
    if device.startswith("cuda"):
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        out["cuda_model_mib"] = start_alloc
    return out


def _mindspore_step(name: str, batch: int, checkpointing: bool, device: str) -> dict:
    import mindspore as ms
    import numpy as np

    import ms_impl
    from common.exits import per_exit
    ms_impl.configure(device=device, mode="pynative")
    ms.set_seed(0)
    net = ms_impl.create_model(name)
    net.set_train(True)
    if checkpointing:
        net.set_grad_checkpointing()
    cfg = net.config
    rng = np.random.RandomState(0)
    x = ms.Tensor(rng.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size).astype(np.float32))
    y = ms.Tensor(rng.randint(0, cfg.num_classes, batch).astype(np.int32))
    ce = ms.nn.CrossEntropyLoss()

    def loss_fn(inp, lab):
        total = 0.0
        for z in per_exit(net(inp)):
            total = total + ce(z, lab)
        return total

    base = _rss_mib()
    start = time.perf_counter()
    loss, grads = ms.value_and_grad(loss_fn, None, net.trainable_params())(x, y)
    float(loss.asnumpy())
    _ = [g.asnumpy() for g in grads[:1]]
    return dict(loss=float(loss.asnumpy()), seconds=time.perf_counter() - start, peak_rss_mib=_rss_mib(),
                model_rss_mib=base)


def child(args) -> int:
    step = _torch_step if args.framework == "torch" else _mindspore_step
    print(json.dumps(step(args.model, args.batch, args.child == "on", args.device)))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model", default="dvt_t2t_vit_12")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--framework", default="torch", choices=("torch", "mindspore"))
    p.add_argument("--device", default="cpu", help="torch: cpu | cuda[:i]; MindSpore: cpu | gpu | ascend")
    p.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    try:
        get_config(args.model)
    except ValueError as err:
        p.error(str(err))
    if args.child:
        return child(args)
    rows = {}
    for setting in ("off", "on"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--batch", str(args.batch),
               "--framework", args.framework, "--device", args.device, "--child", setting]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            print(f"the step with checkpointing {setting} failed (exit status {done.returncode})", file=sys.stderr)
            return 1
        rows[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    key = "cuda_peak_mib" if "cuda_peak_mib" in rows["off"] else "peak_rss_mib"
    base = "cuda_model_mib" if key == "cuda_peak_mib" else "model_rss_mib"
    print(f"{args.framework} / {args.device} / {args.model} / batch {args.batch}: one training step "
          f"(forward + backward of the summed per-exit losses)")
    print(f"{'grad checkpointing':20s} {'peak MiB':>10s} {'step MiB':>10s} {'seconds':>8s} {'loss':>10s}")
    for setting, r in rows.items():
        print(f"{setting:20s} {r[key]:10.0f} {r[key] - r[base]:10.0f} {r['seconds']:8.1f} {r['loss']:10.5f}")
    off, on = rows["off"], rows["on"]
    print(f"with checkpointing: peak x{on[key] / off[key]:.3f}, step memory x"
          f"{(on[key] - on[base]) / max(off[key] - off[base], 1e-9):.3f}, time x{on['seconds'] / off['seconds']:.2f}, "
          f"same loss: {abs(on['loss'] - off['loss']) <= 1e-4 * max(1.0, abs(off['loss']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
