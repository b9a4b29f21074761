"""Serve a DVT over HTTP with dynamic batching (Ray Serve) and a live budget.

    python tools/serve.py runs/digits/checkpoint.pth                                  # PyTorch, fixed thresholds
    python tools/serve.py runs/digits/checkpoint.pth --target-gflops 0.006            # hold 0.006 GFLOPs/image
    python tools/serve.py runs/ms/checkpoint.ckpt --backend mindspore --target-ips 400
    python tools/serve.py exports/digits --backend onnx --p99-ms 50 --max-batch 32 --max-wait-ms 5

    curl -s -H 'Content-Type: image/png' --data-binary @digit.png 'http://127.0.0.1:8000/predict?budget=0.004'
    curl -s http://127.0.0.1:8000/metrics

`POST /predict` takes one PNG or JPEG file as the raw body and an optional `budget` (GFLOPs per image) for that
request alone; it answers JSON with class, confidence, exit (1-based), gflops, the thresholds used and the size of
the batch it ran in. Without a budget a request gets the service's policy: `--target-gflops G` (average GFLOPs per
image), `--target-ips N` (images per second, from per-exit times measured at start-up), `--p99-ms L` (p99 latency
bound), `--budget G` (fixed thresholds for G), or by default the most accurate point of the model's curve.
`GET /health`, `GET /metrics` (exit counts, realised GFLOPs, throughput, queue, batch sizes, latency percentiles,
the controller). Binds to 127.0.0.1 unless `--host` says otherwise; Ctrl-C stops Serve and Ray.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="checkpoint file (.pth / .ckpt / .safetensors) or export folder")
    p.add_argument("--backend", choices=("torch", "mindspore", "onnx"), default=None,
                   help="default: torch for .pth/.safetensors, mindspore for .ckpt, onnx for an export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="largest batch formed (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="longest a request waits for its batch to fill (default 10)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-gflops", type=float, default=None, help="hold this average GFLOPs per image")
    target.add_argument("--target-ips", type=float, default=None, help="hold this many images per second")
    target.add_argument("--p99-ms", type=float, default=None, help="keep the p99 latency below this many ms")
    target.add_argument("--budget", type=float, default=None, help="fixed thresholds of the curve for this budget")
    p.add_argument("--thresholds", default=None, help="a run's thresholds.json or a curve JSON (default: the "
                                                      "curve the checkpoint or export carries)")
    p.add_argument("--solver", default=None, help="which solver's curve (default geometric, exact, genetic)")
    p.add_argument("--model", default=None, help="registered config name (default: from the checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the backend")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted (default 8 MiB)")
    p.add_argument("--verbose", action="store_true", help="Ray's and Serve's own logs on the console")
    return p


def spec_from_args(args):
    from common.serving.ray_app import ServiceSpec

    return ServiceSpec(source=str(args.source), backend=args.backend, threads=args.threads, model=args.model,
                       thresholds=args.thresholds, solver=args.solver, max_batch=args.max_batch,
                       max_wait_ms=args.max_wait_ms, target_gflops=args.target_gflops, target_ips=args.target_ips,
                       p99_ms=args.p99_ms, budget=args.budget, max_body_bytes=int(args.max_body_mb * 1024 * 1024))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from common.serving.backend import default_backend, is_export_dir
    from common.serving.ray_app import check_spec, start_service

    spec = spec_from_args(args)
    try:
        check_spec(spec)
        if not args.source.exists():
            raise ValueError(f"{args.source}: no such checkpoint file or export folder")
        backend = args.backend or default_backend(args.source)
        if is_export_dir(args.source) != (backend == "onnx"):
            kind = "a folder written by tools/export.py" if backend == "onnx" else "a checkpoint file"
            raise ValueError(f"--backend {backend} needs {kind}"
                             f"; {args.source} is {'an export folder' if is_export_dir(args.source) else 'not one'}")
    except ValueError as err:
        parser.error(str(err))  # exit status 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        handle = start_service(spec, args.host, args.port, quiet=not args.verbose)
    except Exception as err:  # the replica failed to load the model, or the port is taken
        print(f"error: the service did not start: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"serving {args.source} ({backend}) at {handle.url} (started in {handle.startup_s:.1f} s): "
          f"POST {handle.url}/predict, GET {handle.url}/health, GET {handle.url}/metrics; Ctrl-C stops", flush=True)
    try:
        stop.wait()
    finally:
        handle.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
