"""A stream of images whose difficulty drifts, served batch by batch under a `BudgetController`.

    order = drifting_order(difficulty, seed=0)             # easy -> hard, then the same images shuffled
    result = run_stream(controller, order, 32, decide, exit_cost, correct)
    report = stream_report(result, test_scores, window=512)

`decide(rows, thresholds) -> (exit_index, seconds)` runs (or replays) one batch: the image indices of the
stream and their per-row thresholds in, each row's exit (0-based) and the batch's compute time out. The
tools run a real model there (`forward_adaptive` with per-sample thresholds); tests replay stored per-exit
logits with the offline rule (`replay_decider`), which gives the same decisions.

The report compares the controlled run with two references at the same data: the static thresholds the
calibration curve gives for the target (what an offline choice realises on this stream), and the offline
optimum, the most accurate fixed thresholds for this very stream at the cost the controller realised
(the exact solver run on the stream's own outputs: a bound no online policy can be expected to beat).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.adaptive import offline_exits
from common.thresholds.exact import solve_exact
from common.thresholds.rule import exit_indices
from common.thresholds.scores import ExitScores

from .controller import BudgetController, running_average, warm_up


def drifting_order(difficulty, seed: int = 0, phases=("sorted", "shuffled")) -> np.ndarray:
    """Stream order over N images: for each phase the N indices, "sorted" easy to hard by `difficulty`
    (higher = harder), "reversed" hard to easy, "shuffled" in a seeded random order."""
    d = np.asarray(difficulty, dtype=np.float64)
    rng = np.random.default_rng(seed)
    parts = []
    for phase in phases:
        if phase == "sorted":
            parts.append(np.argsort(d, kind="stable"))
        elif phase == "reversed":
            parts.append(np.argsort(-d, kind="stable"))
        elif phase == "shuffled":
            parts.append(rng.permutation(d.size))
        else:
            raise ValueError(f"unknown stream phase {phase!r}; choose sorted, reversed or shuffled")
    return np.concatenate(parts)


def replay_decider(logits: np.ndarray, criterion: str = "confidence"):
    """`decide` for stored full-cascade logits (K, N, C): the offline rule row by row (0 seconds)."""
    logits = np.asarray(logits)

    def decide(rows: np.ndarray, thresholds: np.ndarray):
        return offline_exits(logits[:, rows], thresholds, criterion), 0.0

    return decide


@dataclass
class StreamResult:
    """Per batch of the stream: rows served, target, command, realised cost, correct, exit counts."""

    batch_size: int
    rows: list = field(default_factory=list)  # (n,) image indices of each batch
    exits: list = field(default_factory=list)  # (n,) exit of each row
    target: list = field(default_factory=list)
    command: list = field(default_factory=list)
    realised: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    correct: list = field(default_factory=list)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(r) for r in self.rows])

    @property
    def all_rows(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)

    @property
    def all_exits(self) -> np.ndarray:
        return np.concatenate(self.exits) if self.exits else np.zeros(0, np.int64)


def run_stream(controller, order, batch_size: int, decide, exit_cost=None, correct=None,
               realised_from_time: bool = False) -> StreamResult:
    """Serve `order` in batches of `batch_size` under `controller` (plan -> decide -> observe).

    The realised cost fed back is the mean `exit_cost` of the exits taken (default the curve's GFLOPs), or
    with `realised_from_time` the measured seconds per image of the batch. `correct` (K, N) bool, if given,
    is used to count each batch's correct answers."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    cost = controller.exit_cost if exit_cost is None else np.asarray(exit_cost, dtype=np.float64)
    order = np.asarray(order, dtype=np.int64)
    result = StreamResult(batch_size)
    for start in range(0, order.size, batch_size):
        rows = order[start:start + batch_size]
        plan = controller.plan(rows.size)
        exits, seconds = decide(rows, plan.thresholds)
        exits = np.asarray(exits, dtype=np.int64)
        realised = seconds / rows.size if realised_from_time else float(cost[exits].mean())
        step = controller.observe(plan, realised if realised_from_time else None, exits)
        result.rows.append(rows)
        result.exits.append(exits)
        result.target.append(step.target)
        result.command.append(step.command)
        result.realised.append(realised)
        result.seconds.append(float(seconds))
        result.correct.append(int(correct[exits, rows].sum()) if correct is not None else 0)
    return result


def static_run(thresholds, scores: ExitScores, order, batch_size: int, exit_cost) -> tuple[np.ndarray, np.ndarray]:
    """(realised cost per batch, correct per batch) of fixed thresholds on the stream (offline rule)."""
    order = np.asarray(order, dtype=np.int64)
    cost = np.asarray(exit_cost, dtype=np.float64)
    exits = exit_indices(scores.scores[:, order], thresholds)
    realised, correct = [], []
    for start in range(0, order.size, batch_size):
        e, rows = exits[start:start + batch_size], order[start:start + batch_size]
        realised.append(float(cost[e].mean()))
        correct.append(int(scores.correct[e, rows].sum()))
    return np.array(realised), np.array(correct)


def offline_optimum(scores: ExitScores, order, average_gflops: float) -> float:
    """Accuracy of the best fixed thresholds for the stream's own images (with repeats) at `average_gflops`."""
    lo, hi = float(scores.gflops[0]), float(scores.gflops[-1])
    stream = scores.subset(np.asarray(order, dtype=np.int64))
    curve = solve_exact(stream, [min(max(average_gflops, lo), hi)])
    return float(curve.accuracy[0])


def stream_report(result: StreamResult, scores: ExitScores, controller: BudgetController, *, window: int = 512,
                  tolerance: float = 0.03, static=None) -> dict:
    """Tracking error, warm-up and accuracy of a controlled stream (JSON-able).

    `window`: images of the sliding-window running average; warm-up: the images after which that average (and
    the average since the start) stays within +-tolerance of the target to the end. `static`: the fixed
    thresholds to compare with (default the curve's thresholds for the first target).
    """
    sizes = result.sizes
    realised = np.asarray(result.realised)
    target = np.asarray(result.target)
    win = running_average(realised, sizes, window)
    cum = running_average(realised, sizes)
    wu_win, wu_win_images = warm_up(win, target, sizes, tolerance)
    wu_cum, wu_cum_images = warm_up(cum, target, sizes, tolerance)
    after = slice(wu_win, None)
    rel_win = (win - target) / target
    order = result.all_rows
    n = order.size
    gf = np.asarray(scores.gflops, dtype=np.float64)
    gflops_avg = float(gf[result.all_exits].mean())
    accuracy = float(np.sum(result.correct) / n)
    static_t = controller.curve.thresholds_for_budget(target[0]) if static is None else static
    s_real, s_correct = static_run(static_t, scores, order, result.batch_size, controller.exit_cost)
    s_win = running_average(s_real, sizes, window)
    return {
        "images": int(n), "batches": int(sizes.size), "batch_size": result.batch_size, "window_images": window,
        "tolerance": tolerance, "target": float(target[-1]), "target_first": float(target[0]),
        "realised_average": float(cum[-1]), "realised_average_error": float((cum[-1] - target[-1]) / target[-1]),
        "warm_up": {"window": {"batches": wu_win, "images": wu_win_images},
                    "since_start": {"batches": wu_cum, "images": wu_cum_images}},
        "window_error_after_warm_up": {
            "max_abs": float(np.abs(rel_win[after]).max()) if wu_win < sizes.size else None,
            "rms": float(np.sqrt(np.mean(rel_win[after] ** 2))) if wu_win < sizes.size else None},
        "window_error_overall_max_abs": float(np.abs(rel_win).max()),
        "gflops_per_image": gflops_avg,
        "accuracy": accuracy,
        "offline_optimum_accuracy_at_realised_gflops": offline_optimum(scores, order, gflops_avg),
        "static": {"thresholds": [float(v) for v in static_t],
                   "realised_average": float(running_average(s_real, sizes)[-1]),
                   "window_error_max_abs": float(np.abs((s_win - target[0]) / target[0]).max()),
                   "accuracy": float(s_correct.sum() / n)},
        "series": {"images": np.cumsum(sizes).tolist(), "target": target.tolist(), "realised": realised.tolist(),
                   "window_average": win.tolist(), "running_average": cum.tolist(), "command": result.command,
                   "static_window_average": s_win.tolist(), "correct": list(map(int, result.correct)),
                   "static_correct": s_correct.tolist()},
    }
