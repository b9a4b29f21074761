"""The batched inference service on Ray Serve: one replica, dynamic batching with `@serve.batch`.

    handle = start_service(ServiceSpec("runs/digits/checkpoint.pth", target_gflops=0.006), port=8000)
    ... POST {handle.url}/predict?budget=0.005   (body: the PNG/JPEG file, Content-Type image/png|image/jpeg)
    handle.stop()

Routes: `POST /predict` -> {"class", "confidence", "exit" (1-based), "gflops", "budget", "policy", "thresholds",
"batch_size", "request_id"} (the `X-Request-Id` header echoed); `GET /health`; `GET /metrics`
(`common.serving.metrics`). A refused request gets a 4xx JSON {"error": message} and the service goes on.

The replica decodes and preprocesses each request in a worker thread (the event loop stays free to accept),
`@serve.batch` groups up to `max_batch` requests or waits at most `max_wait_ms`, and `BatchWorker.run_batch`
runs the group as one early-exit call in a worker thread (one batch at a time). Ray is started locally and
bound to 127.0.0.1 with the dashboard off and usage statistics off: nothing is sent off the machine.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import asdict, dataclass

# Ray reads these when it starts: no usage reports, no dashboard metrics exporter, quiet workers.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
           "RAY_ENABLE_RECORD_ACTOR_TASK_LOGGING": "0", "RAY_SERVE_LOG_TO_STDERR": "0",
           "RAY_DEDUP_LOGS": "0"}


@dataclass
class ServiceSpec:
    source: str  # checkpoint file or export folder
    backend: str | None = None  # torch | mindspore | onnx (default from the source)
    threads: int | None = None  # CPU threads of the backend
    model: str | None = None
    thresholds: str | None = None  # a thresholds.json / curve file replacing the source's curve
    solver: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 10.0
    target_gflops: float | None = None
    target_ips: float | None = None
    p99_ms: float | None = None
    budget: float | None = None  # fixed policy at this budget (no controller)
    max_body_bytes: int = 8 * 1024 * 1024
    min_side: int = 8
    measure_batch: int | None = None  # batch of the start-up exit-cost measurement (default max_batch)
    seed: int = 0


def check_spec(spec: ServiceSpec) -> None:
    """Argument errors before anything starts (ValueError naming the flag)."""
    if spec.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {spec.max_batch}")
    if not spec.max_wait_ms >= 0:
        raise ValueError(f"--max-wait-ms must be >= 0, got {spec.max_wait_ms}")
    if spec.max_body_bytes < 1:
        raise ValueError(f"--max-body-mb must be positive, got {spec.max_body_bytes} bytes")
    given = [n for n, v in (("--target-gflops", spec.target_gflops), ("--target-ips", spec.target_ips),
                            ("--p99-ms", spec.p99_ms), ("--budget", spec.budget)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"choose one of --target-gflops, --target-ips, --p99-ms, --budget; got {', '.join(given)}")
    for name, v in (("--target-gflops", spec.target_gflops), ("--target-ips", spec.target_ips),
                    ("--p99-ms", spec.p99_ms), ("--budget", spec.budget)):
        if v is not None and not (v > 0 and v != float("inf")):
            raise ValueError(f"{name} must be a positive number, got {v}")


def build_worker(spec: ServiceSpec):
    """Backend + policy + metrics of a spec (in the replica's process)."""
    from .backend import load_backend
    from .worker import BatchWorker, make_policy

    backend = load_backend(spec.source, spec.backend, threads=spec.threads, model=spec.model,
                           thresholds=spec.thresholds, solver=spec.solver)
    policy = make_policy(backend, target_gflops=spec.target_gflops, target_ips=spec.target_ips, p99_ms=spec.p99_ms,
                         budget=spec.budget, measure_batch=spec.measure_batch or spec.max_batch, seed=spec.seed)
    return BatchWorker(backend, policy)


def make_app(spec: ServiceSpec):
    """The Ray Serve application of a spec (the deployment is defined here so that Ray is imported lazily)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from .requests import RequestError, RequestLimits, json_ready, parse_budget, request_image
    from .worker import Item

    @serve.deployment(num_replicas=1, max_ongoing_requests=max(1024, 8 * spec.max_batch),
                      ray_actor_options={"num_cpus": 0}, health_check_period_s=10, health_check_timeout_s=120,
                      graceful_shutdown_timeout_s=5)
    class DVTService:
        def __init__(self, spec_dict: dict):
            self.spec = ServiceSpec(**spec_dict)
            self.worker = build_worker(self.spec)
            self.limits = RequestLimits(max_bytes=self.spec.max_body_bytes, min_side=self.spec.min_side)
            self.predict_batch.set_max_batch_size(self.spec.max_batch)
            self.predict_batch.set_batch_wait_timeout_s(self.spec.max_wait_ms / 1000.0)
            b = self.worker.backend
            self.info = {"status": "ok", "model": b.model_name, "backend": b.name, "num_exits": b.num_exits,
                         "gflops_per_exit": b.gflops.tolist(), "input_shape": list(b.input_shape),
                         "max_batch": self.spec.max_batch, "max_wait_ms": self.spec.max_wait_ms,
                         "budget_range": [self.worker.lowest_budget, float(b.curve.expected_gflops.max())],
                         "policy": self.worker.policy.describe()}

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
        async def predict_batch(self, items: list) -> list:
            return await asyncio.to_thread(self.worker.run_batch, items)

        def _refuse(self, status: int, message: str):
            self.worker.metrics.refuse(status)
            return JSONResponse(json_ready({"error": message, "status": status}), status_code=status)

        async def __call__(self, request: Request):
            arrived = time.monotonic()
            path = request.url.path.rstrip("/") or "/"
            if path in ("/health", "/metrics"):
                if request.method != "GET":
                    return self._refuse(405, f"{path} takes GET, got {request.method}")
                if path == "/health":
                    return JSONResponse(json_ready(self.info))
                return JSONResponse(json_ready(self.worker.metrics.snapshot()))
            if path != "/predict":
                return self._refuse(404, f"no route {path}: use POST /predict, GET /health or GET /metrics")
            if request.method != "POST":
                return self._refuse(405, f"/predict takes POST with the image file as the body, got {request.method}")
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.limits.max_bytes:
                return self._refuse(413, f"the body has {declared} bytes; at most {self.limits.max_bytes} "
                                         "are accepted")
            body = await request.body()
            try:
                budget = parse_budget(request.query_params.get("budget"), self.worker.lowest_budget)
                image = await asyncio.to_thread(request_image, body, request.headers.get("content-type"),
                                                self.worker.backend.preprocessing, self.limits)
            except RequestError as err:
                return self._refuse(err.status, err.message)
            self.worker.metrics.arrived()
            try:
                result = await self.predict_batch(Item(image, budget, arrived, request.headers.get("x-request-id")))
            except Exception as err:  # the batch failed: answer, never drop
                return JSONResponse({"error": f"inference failed: {type(err).__name__}: {err}", "status": 500},
                                    status_code=500)
            self.worker.metrics.answered(time.monotonic() - arrived)
            return JSONResponse(json_ready(result))

    return DVTService.bind(asdict(spec))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServiceHandle:
    """A running service: `url`, `stop()` (Serve and the local Ray cluster it started)."""

    def __init__(self, url: str, started_ray: bool, startup_s: float):
        self.url, self._started_ray, self.startup_s = url, started_ray, startup_s

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            if self._started_ray:
                ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_service(spec: ServiceSpec, host: str = "127.0.0.1", port: int | None = None, *,
                  num_cpus: int | None = None, quiet: bool = True) -> ServiceHandle:
    """Start a local Ray (127.0.0.1, no dashboard, no usage statistics), Serve on host:port, and the app;
    returns once the replica has loaded the model and answers."""
    check_spec(spec)
    start = time.perf_counter()
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import logging

    import ray
    from ray import serve

    started = False
    if not ray.is_initialized():
        for attempt in range(5):  # Ray gives its raylet a fixed 30 s to register: a loaded machine can miss it
            try:
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                         _node_ip_address="127.0.0.1", log_to_driver=not quiet, configure_logging=True,
                         logging_level=logging.WARNING if quiet else logging.INFO)
                break
            except Exception as err:
                ray.shutdown()
                if attempt == 4 or "timed out during startup" not in str(err):
                    raise
        started = True
    port = free_port(host) if port is None else int(port)
    try:
        for attempt in range(3):  # Serve gives its HTTP proxy a fixed 60 s to come up: retry on a loaded machine
            try:
                serve.start(http_options={"host": host, "port": port},
                            logging_config={"log_level": "WARNING"} if quiet else None)
                break
            except ray.exceptions.RayError:
                serve.shutdown()
                if attempt == 2:
                    raise
        serve.run(make_app(spec), name="dvt", route_prefix="/", blocking=False)
    except BaseException:
        try:
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
        raise
    url = f"http://{host}:{port}"
    wait_ready(url)
    return ServiceHandle(url, started, time.perf_counter() - start)


def wait_ready(url: str, timeout_s: float = 300.0) -> None:
    """Until GET /health answers 200: the proxy learns the new route a moment after the app is ready."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=30) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service at {url} did not answer GET /health within {timeout_s:.0f} s")
        time.sleep(0.5)
