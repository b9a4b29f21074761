"""The batched inference service (tools/serve.py's Ray Serve app) through a real HTTP client on 127.0.0.1.

One service for the module (Ray's start-up is most of the time), serving the short trained digits run under a
GFLOPs target. Checked: every answer equals offline `forward_adaptive` on the same image with the thresholds the
answer reports, a request's own budget gets exactly the curve's thresholds for it, concurrent requests are
batched together and each is answered once, malformed requests get a 4xx with a message while the service goes
on, and stopping the service leaves no Ray process behind.
"""
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from common.adaptive import resolve_thresholds
from common.benchmark import encode_thresholds
from common.deploy import preprocess_image
from common.serving.backend import curve_from_extras
from common.serving.ray_app import ServiceSpec, start_service
from common.training.splits import resolve_splits
from torch_impl.checkpoint import read_checkpoint
from torch_impl.serving import TorchBackend

TARGET = 0.006  # GFLOPs per image, inside the digits model's range (0.0025 .. 0.0121)


def ray_processes() -> list:
    names = ("raylet", "gcs_server", "ray::", "dashboard", "runtime_env")
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(n in cmd for n in names) and "pytest" not in cmd:
                found.append(cmd[:120])
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def service(short_torch_run):
    before = set(ray_processes())
    handle = start_service(ServiceSpec(str(short_torch_run / "checkpoint.pth"), threads=1, target_gflops=TARGET,
                                       max_batch=16, max_wait_ms=50, max_body_bytes=200_000))
    try:
        yield handle
    finally:
        handle.stop()
        deadline = time.time() + 30
        while set(ray_processes()) - before and time.time() < deadline:
            time.sleep(0.5)
        left = set(ray_processes()) - before
        assert not left, f"Ray processes left behind: {sorted(left)}"


@pytest.fixture(scope="module")
def offline(short_torch_run):
    path = short_torch_run / "checkpoint.pth"
    backend = TorchBackend.from_checkpoint(path, threads=1)
    return backend, curve_from_extras(read_checkpoint(path))


@pytest.fixture(scope="module")
def pngs():
    test = resolve_splits("digits", img_size=32).test
    files = []
    for i in range(40):
        buf = io.BytesIO()
        Image.fromarray(test.images[i]).save(buf, "PNG")
        files.append(buf.getvalue())
    return files


def call(url, path, body=None, ctype="image/png", headers=None, method=None):
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={**({"Content-Type": ctype} if body is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def offline_answer(offline, body, thresholds):
    backend, _ = offline
    x = preprocess_image(Image.open(io.BytesIO(body)), backend.preprocessing)[None]
    t, _ = resolve_thresholds([float(v) for v in thresholds], backend.num_exits)
    with torch.inference_mode():
        res = backend.model.forward_adaptive(torch.from_numpy(x), t)
    p = torch.softmax(res.logits.double(), 1)[0]
    return int(p.argmax()), float(p.max()), int(res.exit_index[0]) + 1


def test_health(service, offline):
    status, info = call(service.url, "/health")
    assert status == 200 and info["status"] == "ok" and info["model"] == "dvt_tiny_digits"
    assert info["backend"] == "torch" and info["policy"]["mode"] == "target_gflops" and info["max_batch"] == 16
    np.testing.assert_allclose(info["gflops_per_exit"], offline[0].gflops)


def test_concurrent_requests_are_batched_answered_once_and_equal_offline(service, offline, pngs):
    backend, curve = offline
    budgets = [None, 0.004, None, 0.009]
    answers, lock = {}, threading.Lock()

    def client(c):
        for j in range(c, len(pngs), 8):
            q = "" if budgets[j % 4] is None else f"?budget={budgets[j % 4]}"
            status, out = call(service.url, "/predict" + q, pngs[j], headers={"X-Request-Id": f"r{j}"})
            with lock:
                answers.setdefault(f"r{j}", []).append((status, out, j))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(answers) == sorted(f"r{j}" for j in range(len(pngs)))  # nothing lost
    assert all(len(v) == 1 for v in answers.values())  # nothing answered twice
    sizes = []
    for rid, [(status, out, j)] in answers.items():
        assert status == 200 and out["request_id"] == rid
        budget = budgets[j % 4]
        assert out["budget"] == budget and out["policy"] == ("request" if budget else "target_gflops")
        if budget is not None:  # a request's own budget: exactly the curve's thresholds for it
            assert out["thresholds"] == encode_thresholds(curve.thresholds_for_budget(budget))
        cls, conf, exit_ = offline_answer(offline, pngs[j], out["thresholds"])
        assert (out["class"], out["exit"]) == (cls, exit_) and abs(out["confidence"] - conf) < 1e-6
        assert out["gflops"] == pytest.approx(backend.gflops[exit_ - 1])
        sizes.append(out["batch_size"])
    assert max(sizes) > 1  # dynamic batching formed batches
    _, m = call(service.url, "/metrics")
    assert m["requests_answered"] >= len(pngs) and sum(m["exit_counts"]) == m["requests_answered"]
    assert m["queue_length"] == 0 and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"] > 0
    assert m["controller"]["mode"] == "target_gflops" and m["controller"]["batches"] >= 1


def test_malformed_requests_get_4xx_and_the_service_goes_on(service, pngs):
    tiny = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiny, "PNG")
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(pngs[0])).convert("RGB").save(jpeg, "JPEG", quality=95)
    cases = [
        ("/predict", b"not an image at all", "image/png", 400, "not a decodable PNG"),
        ("/predict", tiny.getvalue(), "image/png", 400, "wrong image size 4x4"),
        ("/predict?budget=nan", pngs[0], "image/png", 400, "finite positive"),
        ("/predict?budget=-1", pngs[0], "image/png", 400, "finite positive"),
        ("/predict?budget=lots", pngs[0], "image/png", 400, "must be a number"),
        ("/predict?budget=0.0001", pngs[0], "image/png", 422, "cheapest threshold set"),
        ("/predict", b"\x89PNG" + b"0" * 300_000, "image/png", 413, "at most 200000"),
        ("/predict", pngs[0], "text/plain", 415, "image/png or image/jpeg"),
        ("/predict", pngs[0], "image/jpeg", 400, "Content-Type says JPEG"),
        ("/nowhere", pngs[0], "image/png", 404, "no route"),
    ]
    for path, body, ctype, status, words in cases:
        got, out = call(service.url, path, body, ctype)
        assert (got, out["status"]) == (status, status) and words in out["error"], (path, ctype, got, out)
    got, out = call(service.url, "/predict", method="GET")
    assert got == 405 and "POST" in out["error"]
    got, out = call(service.url, "/predict", jpeg.getvalue(), "image/jpeg")  # and it still serves, JPEG too
    assert got == 200 and 1 <= out["exit"] <= 3
    _, m = call(service.url, "/metrics")
    assert m["requests_refused"]["400"] >= 6 and m["requests_refused"]["413"] >= 1
