"""The budget as a live control: thresholds chosen batch by batch so that the realised cost holds a target.

A `ThresholdCurve` says what each of its threshold sets cost *on the calibration split*. A live stream is
not that split: when its images get harder, more of them go on to the later exits and the same thresholds
cost more (and less when they get easier). `BudgetController` therefore uses the curve only as a map and
corrects it from what the recent batches really cost:

- Actuator. The curve's points, re-costed with the controller's per-exit costs (`exit_cost`, cumulative per
  image: GFLOPs, or measured seconds) from their calibration exit fractions, are reduced to the upper
  concave hull of accuracy against cost, and the ends are extended to "everyone leaves at exit 1" and
  "everyone goes to the last exit" so that any cost in [exit_cost[0], exit_cost[-1]] can be asked for. A
  command u between two hull points j, j+1 gives a share w of the batch's rows point j+1's thresholds and
  the rest point j's (per-sample thresholds, `common.adaptive`): a mixture whose calibration cost is u and
  whose calibration accuracy is the best any mixture of the curve's points has at that cost. The share is
  carried from batch to batch (error diffusion), so small batches still get the exact mixture on average.
- Feedback. After each batch the realised cost r is compared with the calibration cost p the batch was
  planned at; the cost above the floor (exit 1, paid by every image) is modelled as scaled by a drift
  factor m = (r - floor) / (p - floor), estimated over the recent batches (exponential forgetting). The
  shortfall or excess of the recent batches (a leaky sum of n * (r - target)) is paid back over a few
  batches. The next command is u = floor + (target - payback - floor) / m, clipped to what the hull offers.

Targets (`target_for`): average GFLOPs per image (feedback exact: the exits' cumulative GFLOPs), images per
second (the per-exit seconds per image measured on this machine, `ExitCosts`; feedback: the measured
compute time of each batch), or a p99 latency bound (`LatencyController`: an outer loop that sets the
seconds-per-image target of an inner `BudgetController` from the latencies of the recent requests).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from common.thresholds.curve import ThresholdCurve


@dataclass(frozen=True)
class Frontier:
    """The mixable points of a curve in one cost unit: costs (M,) increasing, accuracy (M,), thresholds (M, K)."""

    costs: np.ndarray
    accuracy: np.ndarray
    thresholds: np.ndarray

    @classmethod
    def from_curve(cls, curve: ThresholdCurve, exit_cost=None) -> "Frontier":
        """Upper concave hull of the curve's points (accuracy vs cost in `exit_cost` units, default GFLOPs),
        extended to the two pure policies "all leave at exit 1" and "all go to the last exit"."""
        c = _exit_cost(curve, exit_cost)
        k = curve.num_exits
        costs = curve.exit_fractions @ c
        acc = curve.accuracy.astype(np.float64)
        th = curve.thresholds
        # the two pure policies: their accuracy is unknown (no calibration data here), so they only extend
        # the range: -inf keeps them off the hull wherever a curve point covers that cost
        ends_t = np.stack([np.full(k, -np.inf), np.append(np.full(k - 1, np.inf), -np.inf)])
        costs = np.concatenate([costs, c[[0, -1]]])
        acc = np.concatenate([acc, [-np.inf, -np.inf]])
        th = np.concatenate([th, ends_t])
        order = np.lexsort((-acc, costs))  # by cost; at equal cost the most accurate first
        hull: list[int] = []
        for i in order:
            if hull and costs[i] <= costs[hull[-1]] + 1e-12 * max(1.0, abs(costs[i])):
                continue  # same cost as a kept point, less accurate
            while len(hull) >= 2 and _below(hull[-2], hull[-1], i, costs, acc):
                hull.pop()
            hull.append(i)
        idx = np.array(hull)
        return cls(costs[idx], acc[idx], th[idx])

    @property
    def lo(self) -> float:
        return float(self.costs[0])

    @property
    def hi(self) -> float:
        return float(self.costs[-1])

    def locate(self, u: float) -> tuple[int, float]:
        """(j, w): calibration cost u is the mixture (1 - w) * point j + w * point j+1 (w in [0, 1])."""
        return _locate(self.costs, u)


def _below(a: int, b: int, c: int, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether point b lies on or below the segment a-c (so the upper hull drops it)."""
    if not np.isfinite(y[b]):
        return True
    if not np.isfinite(y[a]) or not np.isfinite(y[c]):
        return False  # an end policy: keep every curve point next to it
    return (y[b] - y[a]) * (x[c] - x[a]) <= (y[c] - y[a]) * (x[b] - x[a])


def _exit_cost(curve: ThresholdCurve, exit_cost) -> np.ndarray:
    c = curve.gflops if exit_cost is None else np.asarray(exit_cost, dtype=np.float64).reshape(-1)
    if c.shape != (curve.num_exits,):
        raise ValueError(f"exit costs must have one value per exit ({curve.num_exits}), got {c.shape}")
    if not np.isfinite(c).all() or (c <= 0).any() or (np.diff(c) <= 0).any():
        raise ValueError(f"exit costs must be positive, finite and increasing (cumulative), got {c.tolist()}")
    return c


@dataclass
class BatchPlan:
    """What the controller chose for one batch."""

    thresholds: np.ndarray  # (n, K) per-row thresholds
    points: np.ndarray  # (n,) hull point of each row
    command: float  # the calibration cost asked for (mixture), in cost units
    planned: float  # the calibration cost of the rows as assigned (average per row)


@dataclass
class ControllerStep:
    """One batch of the controller's history."""

    n: int
    target: float
    command: float
    planned: float
    realised: float
    drift: float  # the drift factor estimate after this batch


class BudgetController:
    """Holds the realised average cost per image at `target` by choosing each batch's thresholds (see module doc).

    controller = BudgetController(curve, target=0.006)              # GFLOPs per image
    plan = controller.plan(len(batch))                              # plan.thresholds: (n, K)
    res = model.forward_adaptive(batch, plan.thresholds)
    controller.observe(plan, exits=res.exit_index)                  # or realised=... (+ exits)

    `exit_cost`: cumulative cost per image at each exit in the target's unit (default the curve's GFLOPs).
    `memory`: batches over which the stream's costs are estimated (forgetting factor 1 - 1/memory);
    `prior_rows`: how many rows of evidence the drift-scaled calibration cost of a point counts as;
    `payback`: batches over which the recent excess or shortfall is paid back; `leak`: per-batch decay of that
    excess (older batches count less).
    """

    def __init__(self, curve: ThresholdCurve, target: float, *, exit_cost=None, memory: float = 4.0,
                 prior_rows: float = 16.0, payback: float = 2.0, leak: float = 0.8, seed: int = 0):
        self.curve = curve
        self.exit_cost = _exit_cost(curve, exit_cost)
        self.frontier = Frontier.from_curve(curve, self.exit_cost)
        self.floor = float(self.exit_cost[0])
        self.set_target(target)
        if memory < 1 or payback < 1 or not 0 <= leak < 1 or prior_rows <= 0:
            raise ValueError(f"memory and payback are >= 1 batch, 0 <= leak < 1 and prior_rows > 0, got {memory}, "
                             f"{payback}, {leak}, {prior_rows}")
        self.forget = 1.0 - 1.0 / memory
        self.prior_rows, self.payback, self.leak = float(prior_rows), float(payback), float(leak)
        m = len(self.frontier.costs)
        self._sum = np.zeros(m)  # forgetting sums of the realised cost of the rows each point was given
        self._cnt = np.zeros(m)
        self._num = 0.0  # forgetting sums of (realised - floor) and (calibration - floor) over all rows
        self._den = 0.0
        th = self.frontier.thresholds  # the pure policies cost the same on any stream
        self._exact = np.full(m, np.nan)
        self._exact[(th[:, :-1] == -np.inf).all(1)] = self.floor
        self._exact[(th[:, :-1] == np.inf).all(1)] = float(self.exit_cost[-1])
        self.excess = 0.0  # leaky sum of n * (realised - target)
        self._carry = 0.0  # fractional rows owed to the upper point (error diffusion)
        self._rng = np.random.default_rng(seed)
        self.history: list[ControllerStep] = []

    # ---- the target ------------------------------------------------------------------------------
    def set_target(self, target: float) -> None:
        target = float(target)
        if not math.isfinite(target) or target <= 0:
            raise ValueError(f"the target cost must be a positive number, got {target!r}")
        self.target = target

    @property
    def reachable(self) -> tuple[float, float]:
        """The range of average costs the exits allow (all at exit 1 .. all at the last exit)."""
        return float(self.exit_cost[0]), float(self.exit_cost[-1])

    @property
    def drift(self) -> float:
        """Estimated ratio of the stream's cost above the floor to the calibration's (1: as calibrated)."""
        return self._num / self._den if self._den > 0 else 1.0

    def stream_costs(self) -> np.ndarray:
        """(M,) estimated cost of each hull point on the current stream: the recent rows given that point,
        shrunk towards its calibration cost scaled by the drift; increasing in the point's index."""
        prior = self.floor + self.drift * (self.frontier.costs - self.floor)
        est = (self._sum + self.prior_rows * prior) / (self._cnt + self.prior_rows)
        est = np.where(np.isnan(self._exact), est, self._exact)
        est = np.maximum.accumulate(est)
        return est + np.arange(est.size) * 1e-12 * max(1.0, abs(self.floor))

    # ---- one batch -------------------------------------------------------------------------------
    def command(self, n: int) -> float:
        """The average cost to aim the next batch of n rows at: the target, less a share of the recent excess."""
        lo, hi = self.reachable
        return min(max(self.target - self.excess / (self.payback * max(n, 1)), lo), hi)

    def plan(self, n: int, command: float | None = None) -> BatchPlan:
        """Per-row thresholds (n, K) for the next batch: the two hull points whose estimated stream costs
        bracket the command, mixed in the share that gives it."""
        u = self.command(n) if command is None else float(command)
        est = self.stream_costs()
        j, w = _locate(est, u)
        owed = self._carry + w * n
        upper = int(min(n, math.floor(owed + 1e-9)))
        self._carry = owed - upper
        points = np.full(n, j, dtype=np.int64)
        if upper:
            points[self._rng.permutation(n)[:upper]] = min(j + 1, len(est) - 1)
        planned = float(est[points].mean()) if n else u
        return BatchPlan(self.frontier.thresholds[points], points, u, planned)

    def observe(self, plan: BatchPlan, realised: float | None = None, exits=None) -> ControllerStep:
        """Feed back what the batch cost: `exits` (n,) the exit (0-based) each row left at, and/or `realised`
        its average cost per image (same unit as the target; e.g. measured seconds per image). With both, the
        rows' costs are the exits' costs scaled to the measured average; with `realised` alone every row is
        charged its point's share of it."""
        n = len(plan.points)
        if exits is not None:
            exits = np.asarray(exits, dtype=np.int64).reshape(-1)
            if exits.shape != (n,):
                raise ValueError(f"exits for {exits.shape[0]} rows, the plan has {n}")
            rows = self.exit_cost[exits]
        else:
            if realised is None:
                raise ValueError("observe needs the batch's exits or its realised cost")
            rows = self.stream_costs()[plan.points]
        if realised is None:
            realised = float(rows.mean()) if n else 0.0
        realised = float(realised)
        if not math.isfinite(realised) or realised < 0:
            raise ValueError(f"realised cost must be a non-negative number, got {realised!r}")
        if n:
            rows = rows * (realised / rows.mean()) if rows.mean() > 0 else rows
            self._sum *= self.forget
            self._cnt *= self.forget
            np.add.at(self._sum, plan.points, rows)
            np.add.at(self._cnt, plan.points, 1.0)
            above = self.frontier.costs[plan.points] - self.floor
            self._num = self.forget * self._num + float(np.maximum(rows - self.floor, 0.0).sum())
            self._den = self.forget * self._den + float(above.sum())
            lo, hi = self.reachable
            self.excess = self.leak * self.excess + n * (realised - self.target)
            cap = self.payback * n * (hi - lo)  # anti-windup: never owe more than can be paid back
            self.excess = min(max(self.excess, -cap), cap)
        step = ControllerStep(n, self.target, plan.command, plan.planned, realised, self.drift)
        self.history.append(step)
        return step


def _locate(costs: np.ndarray, u: float) -> tuple[int, float]:
    """(j, w): u as the mixture (1 - w) * costs[j] + w * costs[j+1] of an increasing array (clipped to its ends)."""
    if len(costs) == 1:
        return 0, 0.0
    u = min(max(float(u), float(costs[0])), float(costs[-1]))
    j = int(np.clip(np.searchsorted(costs, u, side="right") - 1, 0, len(costs) - 2))
    return j, float(np.clip((u - costs[j]) / (costs[j + 1] - costs[j]), 0.0, 1.0))


@dataclass
class ExitCosts:
    """Measured seconds per image of running the cascade up to each exit (cumulative), at one batch size."""

    seconds: np.ndarray  # (K,) cumulative seconds per image
    batch_size: int
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = np.maximum.accumulate(np.asarray(self.seconds, dtype=np.float64).reshape(-1))
        if not np.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"measured exit costs must be positive seconds, got {s.tolist()}")
        s = s + np.arange(s.size) * 1e-12  # strictly increasing even if two exits timed the same
        object.__setattr__(self, "seconds", s)

    @property
    def max_throughput(self) -> float:
        """Images per second with every image leaving at exit 1 (the most any budget can give)."""
        return 1.0 / float(self.seconds[0])

    def to_dict(self) -> dict:
        return {"seconds_per_image": self.seconds.tolist(), "batch_size": self.batch_size, **self.info}


def measure_exit_costs(run, batch, num_exits: int, *, repeats: int = 3, timer=None) -> ExitCosts:
    """Seconds per image of the cascade up to each exit: `run(batch, thresholds)` with thresholds that send every
    row to exit k (interleaved rounds, median), divided by the batch size."""
    import time

    timer = timer or time.perf_counter
    n = len(batch)
    if n < 1:
        raise ValueError("measuring exit costs needs a batch of at least one image")
    rows = [np.append(np.append(np.full(k, np.inf), np.full(num_exits - 1 - k, -np.inf)), -np.inf)[:num_exits]
            for k in range(num_exits)]
    run(batch, rows[-1])  # warm-up (allocations, graph compilation)
    times = [[] for _ in range(num_exits)]
    for _ in range(max(1, repeats)):
        for k in range(num_exits):
            start = timer()
            run(batch, rows[k])
            times[k].append(timer() - start)
    return ExitCosts(np.array([np.median(t) for t in times]) / n, n, {"repeats": repeats})


class LatencyController:
    """Holds the p99 latency of requests at or below `bound_s` by steering an inner `BudgetController` whose unit
    is seconds per image (exit costs measured with `measure_exit_costs`).

    After each batch the p99 of the last `window` request latencies is compared with the bound; the inner
    target (seconds of compute per image) is scaled by (bound * headroom / p99) ** gain, clipped to what the
    exits allow. Latency = waiting for a batch + queueing + compute, so lowering the compute per image both
    shortens each batch and drains the queue faster.
    """

    def __init__(self, inner: BudgetController, bound_s: float, *, window: int = 200, gain: float = 0.5,
                 headroom: float = 0.9):
        if not math.isfinite(bound_s) or bound_s <= 0:
            raise ValueError(f"the p99 latency bound must be a positive number of seconds, got {bound_s!r}")
        self.inner, self.bound, self.gain, self.headroom = inner, float(bound_s), float(gain), float(headroom)
        self.latencies: deque = deque(maxlen=window)

    def plan(self, n: int) -> BatchPlan:
        return self.inner.plan(n)

    def p99(self) -> float | None:
        return float(np.percentile(np.asarray(self.latencies), 99)) if self.latencies else None

    def observe(self, plan: BatchPlan, realised: float, latencies) -> ControllerStep:
        """`realised`: compute seconds per image of the batch; `latencies`: seconds of its requests."""
        self.latencies.extend(float(v) for v in latencies)
        p99 = self.p99()
        if p99 is not None and p99 > 0:
            lo, hi = self.inner.reachable
            scaled = self.inner.target * (self.bound * self.headroom / p99) ** self.gain
            self.inner.set_target(min(max(scaled, lo), hi))
        return self.inner.observe(plan, realised)


def running_average(values, weights, window: int | None = None) -> np.ndarray:
    """Per-batch running average of `values` weighted by `weights` (images): since the start, or over the last
    `window` images (the batch that crosses the window's start counts in part)."""
    v = np.asarray(values, dtype=np.float64)
    n = np.asarray(weights, dtype=np.float64)
    total = np.cumsum(v * n)
    count = np.cumsum(n)
    if window is None:
        return total / np.maximum(count, 1e-12)
    out = np.empty_like(v)
    for i in range(len(v)):  # walk back until the window is full
        left, acc, got = window, 0.0, 0.0
        for j in range(i, -1, -1):
            take = min(n[j], left)
            acc += v[j] * take
            got += take
            left -= take
            if left <= 0:
                break
        out[i] = acc / max(got, 1e-12)
    return out


def warm_up(average: np.ndarray, target, images, tolerance: float = 0.03) -> tuple[int, int]:
    """(batches, images) after which `average` stays within +-tolerance of `target` to the end of the stream
    (len(average) and the total when it never settles)."""
    avg = np.asarray(average, dtype=np.float64)
    tgt = np.broadcast_to(np.asarray(target, dtype=np.float64), avg.shape)
    ok = np.abs(avg - tgt) <= tolerance * np.abs(tgt)
    bad = np.flatnonzero(~ok)
    first = 0 if bad.size == 0 else int(bad[-1]) + 1
    seen = np.concatenate([[0], np.cumsum(np.asarray(images))])
    return first, int(seen[min(first, len(avg))])
