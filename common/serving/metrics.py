"""Counters of a running service, as `GET /metrics` reports them (host side, framework-neutral).

Exit counts, realised GFLOPs per image (since the start and over the recent window), throughput (images per
second over the recent window and since the first request), the queue (requests accepted and not yet in a
running batch), batch sizes formed, end-to-end latency percentiles (arrival at the replica to answer ready),
answered and refused requests by status, and the budget controller's state.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np


class ServiceMetrics:
    def __init__(self, num_exits: int, gflops, *, window_s: float = 10.0, keep: int = 20000, clock=None):
        self.clock = clock or time.monotonic
        self.gflops = np.asarray(gflops, dtype=np.float64)
        self.window_s = float(window_s)
        self.exit_counts = np.zeros(num_exits, dtype=np.int64)
        self.images = 0
        self.gflops_total = 0.0
        self.batches = 0
        self.batch_sizes: Counter = Counter()
        self.refused: Counter = Counter()  # HTTP status -> requests refused
        self.queued = 0  # accepted, waiting for a batch
        self.in_batch = 0  # in the batch being computed
        self.started = self.clock()
        self.first = None
        self.latencies: deque = deque(maxlen=keep)  # seconds, most recent answers
        self.recent: deque = deque()  # (time, images, gflops) of the recent batches
        self.compute_s = 0.0
        self.controller: dict | None = None
        self._lock = threading.Lock()

    # ---- events ---------------------------------------------------------------------------------
    def arrived(self) -> None:
        with self._lock:
            self.queued += 1
            if self.first is None:
                self.first = self.clock()

    def refuse(self, status: int) -> None:
        with self._lock:
            self.refused[int(status)] += 1

    def batch_started(self, n: int) -> None:
        with self._lock:
            self.queued -= n
            self.in_batch += n

    def batch_done(self, exit_index, seconds: float) -> None:
        exits = np.asarray(exit_index, dtype=np.int64)
        now = self.clock()
        with self._lock:
            self.in_batch -= exits.size
            np.add.at(self.exit_counts, exits, 1)
            g = float(self.gflops[exits].sum())
            self.images += exits.size
            self.gflops_total += g
            self.batches += 1
            self.batch_sizes[int(exits.size)] += 1
            self.compute_s += float(seconds)
            self.recent.append((now, exits.size, g))
            while self.recent and self.recent[0][0] < now - self.window_s:
                self.recent.popleft()

    def answered(self, latency_s: float) -> None:
        with self._lock:
            self.latencies.append(float(latency_s))

    def failed(self, n: int) -> None:
        """A batch that raised: its requests are answered 500 and leave the counters."""
        with self._lock:
            self.in_batch -= n
            self.refused[500] += n

    # ---- the report -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            now = self.clock()
            lat = np.asarray(self.latencies, dtype=np.float64)
            pct = {f"p{p}": float(np.percentile(lat, p) * 1000) for p in (50, 90, 99)} if lat.size else {}
            if lat.size:
                pct["max"] = float(lat.max() * 1000)
            recent = [r for r in self.recent if r[0] >= now - self.window_s]
            r_images = sum(r[1] for r in recent)
            r_gflops = sum(r[2] for r in recent)
            span = min(self.window_s, now - (self.first if self.first is not None else now)) or None
            since = now - self.first if self.first is not None else 0.0
            return {
                "requests_answered": int(self.images),
                "requests_refused": {str(k): int(v) for k, v in sorted(self.refused.items())},
                "exit_counts": self.exit_counts.tolist(),
                "gflops_per_image": self.gflops_total / self.images if self.images else None,
                "gflops_per_image_recent": r_gflops / r_images if r_images else None,
                "throughput_ips": r_images / span if span else 0.0,
                "throughput_ips_since_first": self.images / since if since > 0 else 0.0,
                "queue_length": int(self.queued),
                "in_batch": int(self.in_batch),
                "batches": int(self.batches),
                "batch_sizes": {str(k): int(v) for k, v in sorted(self.batch_sizes.items())},
                "mean_batch_size": self.images / self.batches if self.batches else None,
                "compute_seconds": self.compute_s,
                "latency_ms": pct,
                "window_s": self.window_s,
                "uptime_s": now - self.started,
                "controller": self.controller,
            }
