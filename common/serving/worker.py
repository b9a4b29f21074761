"""One batch of requests -> one early-exit call: the host side of the service, framework-neutral.

The serving library forms the batch (`@serve.batch`); `BatchWorker.run_batch` stacks the preprocessed
images, gives every row its thresholds — a request's own `budget` picks the curve's thresholds for that
budget, the other rows get what the policy says (the budget controller's plan for this batch, or the fixed
default) — runs `backend.run(images, thresholds (B, K))` once, answers every row, and feeds the realised cost
back to the controller. Rows with different budgets share the batch: each is decided by its own thresholds,
exactly as `forward_adaptive` decides it offline.

Policies (`make_policy`): fixed (the curve's most accurate point, or `budget`), `target_gflops` (average
GFLOPs per image), `target_ips` (images per second: per-exit seconds measured on this machine at start-up,
feedback from the measured compute time of each batch), `p99_ms` (a latency bound on top of the ips loop).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.benchmark import encode_thresholds
from common.thresholds.scores import max_softmax

from .controller import BudgetController, LatencyController, measure_exit_costs
from .metrics import ServiceMetrics


@dataclass
class Item:
    image: np.ndarray  # (C, H, W) float32, preprocessed
    budget: float | None  # the request's own GFLOPs per image, or None (the policy decides)
    arrived: float  # time.monotonic() at the replica
    request_id: str | None = None


class Policy:
    """How rows without their own budget get thresholds; `controller` is None for a fixed policy."""

    def __init__(self, mode: str, thresholds: np.ndarray | None = None, controller=None, unit: str = "gflops",
                 exit_costs=None, target=None):
        self.mode, self.fixed, self.controller, self.unit = mode, thresholds, controller, unit
        self.exit_costs, self.target = exit_costs, target

    @property
    def time_based(self) -> bool:
        return self.unit == "seconds"

    def describe(self) -> dict:
        out = {"mode": self.mode, "target": self.target}
        if self.exit_costs is not None:
            out["exit_seconds_per_image"] = self.exit_costs.seconds.tolist()
            out["exit_costs_batch_size"] = self.exit_costs.batch_size
            out["max_throughput_ips"] = self.exit_costs.max_throughput
        ctl = self.controller
        inner = getattr(ctl, "inner", ctl)
        if inner is not None:
            out.update(unit=self.unit, inner_target=inner.target, drift=inner.drift,
                       batches=len(inner.history))
            if inner.history:
                h = inner.history[-1]
                out.update(last_command=h.command, last_realised=h.realised)
            if isinstance(ctl, LatencyController):
                out["p99_recent_ms"] = None if ctl.p99() is None else ctl.p99() * 1000
        elif self.fixed is not None:
            out["thresholds"] = [float(v) for v in self.fixed]
        return out


def make_policy(backend, *, target_gflops: float | None = None, target_ips: float | None = None,
                p99_ms: float | None = None, budget: float | None = None, measure_batch: int = 64,
                measure_repeats: int = 3, seed: int = 0) -> Policy:
    """The policy of the service's command-line targets (at most one of them)."""
    given = [n for n, v in (("--target-gflops", target_gflops), ("--target-ips", target_ips), ("--p99-ms", p99_ms))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"choose one target: {' and '.join(given)} were both given")
    curve = backend.curve
    if curve is None:
        raise ValueError(f"{backend.model_name}: the model carries no threshold curve; serve a checkpoint written by "
                         "the trainers or pass --thresholds RUN/thresholds.json")
    if target_gflops is not None:
        ctl = BudgetController(curve, _positive(target_gflops, "--target-gflops"), seed=seed)
        lo, hi = ctl.reachable
        if not lo <= target_gflops <= hi:
            raise ValueError(f"--target-gflops {target_gflops:g}: this model spends between {lo:.6g} (every image "
                             f"at exit 1) and {hi:.6g} (every image at the last exit) GFLOPs per image")
        return Policy("target_gflops", controller=ctl, unit="gflops", target=target_gflops)
    if target_ips is not None or p99_ms is not None:
        shape = (measure_batch,) + tuple(backend.input_shape)
        probe = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        costs = measure_exit_costs(backend.run, probe, backend.num_exits, repeats=measure_repeats)
        if target_ips is not None:
            per_image = 1.0 / _positive(target_ips, "--target-ips")
            # a target beyond what the exits allow is kept: the controller then does what it can (all at exit 1)
            ctl = BudgetController(curve, per_image, exit_cost=costs.seconds, seed=seed)
            return Policy("target_ips", controller=ctl, unit="seconds", exit_costs=costs, target=target_ips)
        bound = _positive(p99_ms, "--p99-ms") / 1000.0
        inner = BudgetController(curve, float(costs.seconds[-1]), exit_cost=costs.seconds, seed=seed)
        return Policy("p99_ms", controller=LatencyController(inner, bound), unit="seconds", exit_costs=costs,
                      target=p99_ms)
    if budget is not None:
        return Policy("fixed", thresholds=curve.thresholds_for_budget(budget), target=budget)
    best = curve.index_for_budget(float(curve.expected_gflops.max()))
    return Policy("fixed", thresholds=curve.thresholds[best].copy(), target=float(curve.expected_gflops[best]))


def _positive(value, flag: str) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{flag} must be a positive number, got {value!r}")
    return v


class BatchWorker:
    """Runs batches of `Item`s on a backend under a policy, and keeps the service's metrics."""

    def __init__(self, backend, policy: Policy, metrics: ServiceMetrics | None = None):
        self.backend, self.policy = backend, policy
        self.curve = backend.curve
        self.metrics = metrics or ServiceMetrics(backend.num_exits, backend.gflops)
        self.lowest_budget = float(self.curve.expected_gflops.min())
        self._budget_rows: dict[float, np.ndarray] = {}
        self.metrics.controller = policy.describe()

    def thresholds_for(self, budget: float) -> np.ndarray:
        if budget not in self._budget_rows:
            self._budget_rows[budget] = self.curve.thresholds_for_budget(budget)
        return self._budget_rows[budget]

    def run_batch(self, items: list[Item]) -> list[dict]:
        n, k = len(items), self.backend.num_exits
        self.metrics.batch_started(n)
        try:
            x = np.stack([it.image for it in items]).astype(np.float32, copy=False)
            rows = np.empty((n, k))
            own = [i for i, it in enumerate(items) if it.budget is not None]
            free = [i for i, it in enumerate(items) if it.budget is None]
            for i in own:
                rows[i] = self.thresholds_for(items[i].budget)
            plan = None
            ctl = self.policy.controller
            if free:
                if ctl is not None:
                    plan = ctl.plan(len(free))
                    rows[free] = plan.thresholds
                else:
                    rows[free] = self.policy.fixed
            start = time.perf_counter()
            out = self.backend.run(x, rows)
            seconds = time.perf_counter() - start
        except Exception:
            self.metrics.failed(n)
            raise
        exits = out.exit_index
        if plan is not None:
            free_exits = exits[free]
            realised = seconds / n if self.policy.time_based else None
            if isinstance(ctl, LatencyController):
                now = time.monotonic()
                ctl.observe(plan, realised, [now - items[i].arrived for i in free])
            else:
                ctl.observe(plan, realised, free_exits)
        self.metrics.batch_done(exits, seconds)
        self.metrics.controller = self.policy.describe()
        confidence = max_softmax(out.logits)
        classes = out.logits.argmax(axis=1)
        target = self.policy.target
        return [{"class": int(classes[i]), "confidence": float(confidence[i]), "exit": int(exits[i]) + 1,
                 "gflops": float(self.backend.gflops[exits[i]]),
                 "budget": items[i].budget if items[i].budget is not None else None,
                 "policy": "request" if items[i].budget is not None else self.policy.mode,
                 "policy_target": None if items[i].budget is not None else target,
                 "thresholds": encode_thresholds(rows[i]),
                 "batch_size": n, "request_id": items[i].request_id} for i in range(n)]
