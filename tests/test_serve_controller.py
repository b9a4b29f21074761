"""The budget controller (common.serving.controller) and the service's host-side pieces, without a server.

The drifting stream is synthetic (common.thresholds.synthetic): calibration on 1,000 samples, then 4,000 others
served easy -> hard (by the last exit's loss) and again shuffled, in batches of 32. Measured here: the running
average since the start settles within +-3% of the target after 160-1,216 images and ends within 0.7%, where the
curve's static thresholds for the same target miss it by 4-28%.
"""
import io
import math

import numpy as np
import pytest
from PIL import Image

from common.serving.controller import (BudgetController, ExitCosts, Frontier, LatencyController, measure_exit_costs,
                                       running_average, warm_up)
from common.serving.metrics import ServiceMetrics
from common.serving.requests import RequestError, RequestLimits, content_kind, decode_image, parse_budget
from common.serving.stream import drifting_order, replay_decider, run_stream, stream_report
from common.thresholds import ExitScores, ThresholdCurve, solve, synthetic_exit_outputs


@pytest.fixture(scope="module")
def stream_data():
    out = synthetic_exit_outputs(5000, seed=1)
    calib = ExitScores.from_outputs(out, indices=np.arange(1000))
    idx = np.arange(1000, 5000)
    test = ExitScores.from_outputs(out, indices=idx)
    last = out.logits[-1, idx].astype(np.float64)
    lse = np.log(np.exp(last - last.max(1, keepdims=True)).sum(1)) + last.max(1)
    loss = lse - last[np.arange(idx.size), out.labels[idx]]
    return solve("geometric", calib), test, out.logits[:, idx], loss


def manual_curve():
    gflops = np.array([1.0, 2.0, 4.0])
    return ThresholdCurve(solver="manual", criterion="confidence", gflops=gflops, budgets=[1.5, 2.0, 3.0, 3.5],
                          thresholds=[[0.9, 0.9, -np.inf], [0.8, 0.5, -np.inf], [0.5, 0.2, -np.inf],
                                      [0.6, 0.1, -np.inf]],
                          accuracy=[0.6, 0.7, 0.72, 0.71], expected_gflops=[1.5, 2.0, 3.0, 3.5],
                          exit_fractions=[[0.5, 0.5, 0], [0.25, 0.5, 0.25], [0.2, 0.2, 0.6], [0.1, 0.3, 0.6]])


def test_frontier_is_the_upper_hull_extended_to_the_pure_policies():
    f = Frontier.from_curve(manual_curve())
    # costs from the exit fractions: 1.5, 2.25, 3.0, 3.1 (the last is dearer and less accurate, on the hull's
    # falling side); the ends are "all at exit 1" (1.0) and "all at the last exit" (4.0)
    np.testing.assert_allclose(f.costs, [1.0, 1.5, 2.25, 3.0, 3.1, 4.0])
    assert (f.thresholds[0, :2] == -np.inf).all() and (f.thresholds[-1, :2] == np.inf).all()
    assert f.locate(2.625) == (2, 0.5) and f.locate(0.2) == (0, 0.0) and f.locate(9.0) == (4, 1.0)
    # in seconds: exit 2 relatively dearer moves the points
    g = Frontier.from_curve(manual_curve(), exit_cost=[1.0, 3.0, 4.0])
    np.testing.assert_allclose(g.costs[1:4], [2.0, 2.75, 3.2])
    with pytest.raises(ValueError, match="increasing"):
        Frontier.from_curve(manual_curve(), exit_cost=[1.0, 0.5, 4.0])


def test_plan_mixes_two_points_row_by_row_and_owes_the_fraction():
    ctl = BudgetController(manual_curve(), 2.5)
    plans = [ctl.plan(3, command=2.625) for _ in range(4)]  # half the rows at 2.25, half at 3.0
    points = np.concatenate([p.points for p in plans])
    assert set(points.tolist()) == {2, 3} and (points == 3).sum() == 6  # 12 rows * 0.5, carried across batches
    np.testing.assert_array_equal(plans[0].thresholds, ctl.frontier.thresholds[plans[0].points])
    assert np.mean([p.planned for p in plans]) == pytest.approx(2.625)


def test_feedback_learns_a_stream_that_costs_more_than_calibration():
    """A plant where every point costs 50% more above the floor than calibrated: the controller lowers its ask."""
    ctl = BudgetController(manual_curve(), 2.5)
    cost = ctl.frontier.costs
    for _ in range(30):
        plan = ctl.plan(32)
        realised = 1.0 + 1.5 * (cost[plan.points].mean() - 1.0)
        ctl.observe(plan, realised)
    assert ctl.drift == pytest.approx(1.5, rel=0.05)
    tail = [h.realised for h in ctl.history[-10:]]
    assert np.mean(tail) == pytest.approx(2.5, rel=0.03)
    assert ctl.history[-1].command < 2.5 or np.mean([h.planned for h in ctl.history[-10:]]) < 2.5
    with pytest.raises(ValueError, match="exits or its realised cost"):
        ctl.observe(ctl.plan(2))


@pytest.mark.parametrize("target", [0.8, 1.5, 2.5])
def test_drifting_stream_holds_the_running_average(stream_data, target):
    curve, test, logits, loss = stream_data
    ctl = BudgetController(curve, target)
    order = drifting_order(loss, seed=0)  # easy -> hard, then shuffled: 8,000 images
    res = run_stream(ctl, order, 32, replay_decider(logits), correct=test.correct)
    rep = stream_report(res, test, ctl, window=512)
    assert rep["images"] == 8000 and rep["batches"] == 250
    assert abs(rep["realised_average_error"]) <= 0.01
    assert rep["warm_up"]["since_start"]["images"] <= 1500  # then within +-3% to the end
    assert abs(rep["static"]["realised_average"] - target) / target >= 0.04  # the curve alone misses
    assert rep["accuracy"] >= rep["offline_optimum_accuracy_at_realised_gflops"] - 0.02
    # replayed decisions are the offline rule: the exits reported are those of the thresholds planned
    assert np.array_equal(np.sort(res.all_rows[:8000 // 2]), np.arange(4000))


def test_running_average_and_warm_up():
    avg = running_average([1.0, 3.0, 2.0], [2, 2, 4], window=4)
    np.testing.assert_allclose(avg, [1.0, 2.0, 2.0])
    np.testing.assert_allclose(running_average([1.0, 3.0], [1, 3]), [1.0, 2.5])
    assert warm_up([0.5, 1.02, 0.9, 1.01, 0.99], 1.0, [10] * 5) == (3, 30)
    assert warm_up([1.0, 1.0], 1.0, [4, 4]) == (0, 0)


def test_measured_exit_costs_and_the_throughput_loop():
    calls, clock = [], [0.0]

    def run(batch, thresholds):  # up to exit 1, 2, 3 takes 0.1, 0.3, 0.5 s per batch
        calls.append(np.asarray(thresholds).tolist())
        clock[0] += (0.1, 0.3, 0.5)[int((np.asarray(thresholds[:-1]) == np.inf).sum())]  # closed exits

    costs = measure_exit_costs(run, np.zeros((10, 1)), 3, repeats=3, timer=lambda: clock[0])
    assert calls[0] == [np.inf, np.inf, -np.inf]  # warm-up: everything to the last exit
    assert calls[1:4] == [[-np.inf, -np.inf, -np.inf], [np.inf, -np.inf, -np.inf], [np.inf, np.inf, -np.inf]]
    np.testing.assert_allclose(costs.seconds, [0.01, 0.03, 0.05], rtol=1e-9)
    assert costs.max_throughput == pytest.approx(100.0)
    with pytest.raises(ValueError, match="positive seconds"):
        ExitCosts(np.array([0.0, 1.0]), 4)


def test_latency_controller_brings_p99_under_the_bound():
    curve = manual_curve()
    inner = BudgetController(curve, 4.0, exit_cost=[1.0, 2.0, 4.0])  # "seconds" per image, start at the top
    ctl = LatencyController(inner, bound_s=30.0, window=64)
    for _ in range(40):  # latency of a request ~ 10 x the batch's compute per image (queue of 10 batches)
        plan = ctl.plan(16)
        per_image = inner.frontier.costs[plan.points].mean()
        ctl.observe(plan, per_image, np.full(16, 10 * per_image))
    assert ctl.p99() <= 30.0 and inner.target < 3.0


def test_request_checks_name_what_was_expected():
    assert parse_budget(None) is None and parse_budget("0.5", lowest=0.2) == 0.5
    for bad in ("nan", "-1", "0", "inf", "abc", ""):
        with pytest.raises(RequestError) as err:
            parse_budget(bad)
        assert err.value.status == 400 and "budget" in err.value.message
    with pytest.raises(RequestError) as err:
        parse_budget("0.1", lowest=0.2)
    assert err.value.status == 422 and "cheapest" in err.value.message
    assert content_kind("image/png") == "PNG" and content_kind("image/jpeg; q=1") == "JPEG"
    with pytest.raises(RequestError) as err:
        content_kind("application/octet-stream")
    assert err.value.status == 415
    png = io.BytesIO()
    Image.new("RGB", (4, 40)).save(png, "PNG")
    limits = RequestLimits(max_bytes=10_000)
    cases = [(png.getvalue(), "PNG", 400, "wrong image size 4x40"), (b"GIF89a", "PNG", 400, "not a decodable"),
             (b"", "PNG", 400, "empty body"), (png.getvalue(), "JPEG", 400, "Content-Type says JPEG"),
             (b"x" * 10_001, "PNG", 413, "at most 10000")]
    for body, kind, status, words in cases:
        with pytest.raises(RequestError) as err:
            decode_image(body, kind, limits)
        assert err.value.status == status and words in err.value.message


def test_metrics_snapshot():
    now = [0.0]
    m = ServiceMetrics(3, [1.0, 2.0, 4.0], window_s=10, clock=lambda: now[0])
    for _ in range(5):
        m.arrived()
    m.batch_started(5)
    now[0] = 2.0
    m.batch_done([0, 0, 1, 2, 2], 0.5)
    for v in (0.01, 0.02, 0.03, 0.04, 0.2):
        m.answered(v)
    m.refuse(400)
    s = m.snapshot()
    assert s["exit_counts"] == [2, 1, 2] and s["gflops_per_image"] == pytest.approx(12 / 5)
    assert s["throughput_ips"] == pytest.approx(2.5) and s["queue_length"] == 0 and s["batch_sizes"] == {"5": 1}
    assert s["latency_ms"]["p50"] == pytest.approx(30.0) and s["requests_refused"] == {"400": 1}
    assert math.isclose(s["latency_ms"]["max"], 200.0)
