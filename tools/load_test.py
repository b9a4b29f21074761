"""A bounded load run against the inference service: throughput, latency, batches formed, realised GFLOPs.

    python tools/load_test.py runs/digits/checkpoint.pth --requests 2000 --clients 8
    python tools/load_test.py runs/digits/checkpoint.pth --compare-ips 1.5     # static, then a target 1.5x its rate
    python tools/load_test.py --random-init dvt_t2t_vit_12 --requests 200 --compare-ips 1.5 --max-batch 16

Starts the service (tools/serve.py's app, Ray Serve on 127.0.0.1) and `--clients` closed-loop HTTP clients that
send `--requests` PNG files in all (the run's digits test images, resized to the model's input), then reads
`/metrics`. `--compare-ips F` serves twice on the same Ray instance: first with the fixed thresholds of the
curve's most accurate point ("static"), then with `--target-ips` = F x the static run's measured throughput,
and prints both. `--random-init MODEL` serves a seeded random-weight model whose curve is solved on 64
images (for timing only: its accuracy means nothing). Results go to `--out` (JSON).
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", type=Path, help="checkpoint file or export folder")
    p.add_argument("--random-init", default=None, metavar="MODEL", help="serve a seeded random-weight MODEL")
    p.add_argument("--backend", choices=("torch", "mindspore", "onnx"), default=None)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-gflops", type=float, default=None)
    target.add_argument("--target-ips", type=float, default=None)
    target.add_argument("--p99-ms", type=float, default=None)
    target.add_argument("--compare-ips", type=float, default=None, metavar="F",
                        help="static run, then a --target-ips of F x its measured throughput")
    p.add_argument("--budget-share", type=float, default=0.0,
                   help="share of requests that carry their own ?budget= (random inside the curve's range)")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    p.add_argument("--seed", type=int, default=0)
    return p


def request_files(img_size: int, n: int = 64) -> list[bytes]:
    """PNG files of the digits test split at the model's input size."""
    from PIL import Image

    from common.training.splits import resolve_splits

    test = resolve_splits("digits", img_size=32).test
    files = []
    for a in test.images[:n]:
        buf = io.BytesIO()
        Image.fromarray(a).convert("RGB").resize((img_size, img_size), Image.BILINEAR).save(buf, "PNG")
        files.append(buf.getvalue())
    return files


def random_init_checkpoint(name: str, folder: Path, seed: int = 0, images: int = 64) -> Path:
    """A seeded random-weight checkpoint of `name` with a geometric curve solved on `images` digits images."""
    import torch
    from PIL import Image

    from common.deploy import preprocess_image
    from common.flops import cumulative_gflops
    from common.thresholds import ExitOutputs, ExitScores, solve
    from common.training.splits import resolve_splits
    from torch_impl import create_model
    from torch_impl.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = create_model(name).eval()
    cfg = model.config
    calib = resolve_splits("digits", img_size=32).calib
    x = np.stack([preprocess_image(Image.fromarray(a).convert("RGB"), cfg) for a in calib.images[:images]])
    with torch.inference_mode():
        logits = np.concatenate([torch.stack(model(torch.from_numpy(x[i:i + 32]))).numpy()
                                 for i in range(0, len(x), 32)], axis=1)
    labels = logits[-1].argmax(1)  # no labels for random weights: the last exit's answer stands in
    curve = solve("geometric", ExitScores.from_outputs(ExitOutputs(logits, labels, cumulative_gflops(cfg), name, "c")))
    path = folder / f"{name}_random.pth"
    save_checkpoint(model, path, extras={"thresholds": {"geometric": curve.to_dict()}})
    return path


def load(url: str, files: list[bytes], requests: int, clients: int, budgets=None) -> dict:
    """Closed-loop clients (one keep-alive connection each): every request answered exactly once, timed."""
    u = urlparse(url)
    latencies, statuses, seen = [], {}, {}
    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            q = "" if budgets is None or budgets[i] is None else f"?budget={budgets[i]:.6g}"
            start = time.perf_counter()
            conn.request("POST", "/predict" + q, body=files[i % len(files)],
                         headers={"Content-Type": "image/png", "X-Request-Id": str(i)})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                rid = body.get("request_id")
                seen[rid] = seen.get(rid, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {"requests": requests, "clients": clients, "seconds": wall, "throughput_rps": requests / wall,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)), "max": float(lat.max())},
            "statuses": {str(k): v for k, v in statuses.items()},
            "answered_once": sum(1 for v in seen.values() if v == 1) == requests and len(seen) == requests}


def metrics(url: str) -> dict:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", "/metrics")
    return json.loads(conn.getresponse().read())


def summary(label: str, r: dict, m: dict) -> str:
    return (f"{label}: {r['requests']} requests from {r['clients']} clients in {r['seconds']:.1f} s = "
            f"{r['throughput_rps']:.1f} req/s; latency p50 {r['latency_ms']['p50']:.1f} ms, p99 "
            f"{r['latency_ms']['p99']:.1f} ms; batches {m['batches']} (mean size {m['mean_batch_size']:.1f}, sizes "
            f"{_top(m['batch_sizes'])}); realised {m['gflops_per_image']:.6g} GFLOPs/image, exits {m['exit_counts']}; "
            f"statuses {r['statuses']}, every request answered once: {r['answered_once']}")


def _top(sizes: dict, k: int = 5) -> str:
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{s}x{c}" for s, c in top)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.source is None) == (args.random_init is None):
        parser.error("give a checkpoint / export folder, or --random-init MODEL")
    if args.requests < 1 or args.clients < 1:
        parser.error("--requests and --clients must be >= 1")
    from ray import serve

    from common.serving.ray_app import ServiceSpec, wait_ready, make_app, start_service

    tmp = tempfile.TemporaryDirectory(prefix="dvt_load_")
    source = args.source or random_init_checkpoint(args.random_init, Path(tmp.name), args.seed)
    base = dict(source=str(source), backend=args.backend, threads=args.threads, max_batch=args.max_batch,
                max_wait_ms=args.max_wait_ms, seed=args.seed)
    first = ServiceSpec(**base, target_gflops=args.target_gflops, target_ips=args.target_ips, p99_ms=args.p99_ms)
    handle = start_service(first)
    results = {"source": str(source), "random_init": args.random_init, "startup_s": handle.startup_s, "runs": []}
    try:
        info = json.loads(_get(handle.url, "/health"))
        files = request_files(info["input_shape"][1])
        rng = np.random.default_rng(args.seed)
        lo, hi = info["budget_range"]
        budgets = [float(rng.uniform(lo, hi)) if rng.random() < args.budget_share else None
                   for _ in range(args.requests)]
        label = first.target_ips and "target-ips" or first.target_gflops and "target-gflops" or \
            first.p99_ms and "p99" or "static"
        runs = [(label, first)]
        for i, (label, spec) in enumerate(runs):
            if i:
                serve.run(make_app(spec), name="dvt", route_prefix="/", blocking=False)
                wait_ready(handle.url)
                info = json.loads(_get(handle.url, "/health"))
            load(handle.url, files, min(args.requests, 4 * args.clients), args.clients, None)  # warm-up
            before = metrics(handle.url)
            r = load(handle.url, files, args.requests, args.clients, budgets)
            m = metrics(handle.url)
            m = _delta(before, m)
            m["controller"] = metrics(handle.url)["controller"]
            results["runs"].append({"label": label, "policy": info["policy"], "client": r, "service": m})
            print(summary(label, r, m), flush=True)
            if m["controller"] and m["controller"].get("exit_seconds_per_image"):
                c = m["controller"]
                print(f"  measured exit costs {np.round(np.asarray(c['exit_seconds_per_image']) * 1000, 3).tolist()} "
                      f"ms/image; controller target {c['target']}, last command {c.get('last_command')}", flush=True)
            if i == 0 and args.compare_ips:
                runs.append(("target-ips", ServiceSpec(**base, target_ips=args.compare_ips * r["throughput_rps"])))
        if args.compare_ips:
            s, t = results["runs"][0], results["runs"][1]
            target = t["policy"]["target"]
            print(f"static: {s['client']['throughput_rps']:.1f} req/s at {s['service']['gflops_per_image']:.6g} "
                  f"GFLOPs/image; target {target:.1f} images/s: measured {t['client']['throughput_rps']:.1f} req/s "
                  f"({100 * (t['client']['throughput_rps'] / target - 1):+.1f}%) at "
                  f"{t['service']['gflops_per_image']:.6g} GFLOPs/image", flush=True)
            results["target_met"] = t["client"]["throughput_rps"] >= 0.97 * target
    finally:
        handle.stop()
        tmp.cleanup()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    return 0


def _get(url: str, path: str) -> bytes:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", path)
    return conn.getresponse().read()


def _delta(before: dict, after: dict) -> dict:
    """The service's counters over one run (after - before) where they are cumulative."""
    out = dict(after)
    n = after["requests_answered"] - before["requests_answered"]
    out["requests_answered"] = n
    out["exit_counts"] = (np.asarray(after["exit_counts"]) - np.asarray(before["exit_counts"])).tolist()
    out["batches"] = after["batches"] - before["batches"]
    sizes = {k: after["batch_sizes"].get(k, 0) - before["batch_sizes"].get(k, 0) for k in after["batch_sizes"]}
    out["batch_sizes"] = {k: v for k, v in sizes.items() if v}
    out["mean_batch_size"] = n / out["batches"] if out["batches"] else None
    ga = (after["gflops_per_image"] or 0) * after["requests_answered"]
    gb = (before["gflops_per_image"] or 0) * before["requests_answered"]
    out["gflops_per_image"] = (ga - gb) / n if n else None
    return out


if __name__ == "__main__":
    sys.exit(main())
