"""Service responses are JSON even when thresholds are infinite (`common.serving.requests.json_ready`).

A fixed policy at the curve's most accurate point of a run whose last exit is best sends everyone to the last
exit: thresholds [inf, inf, -inf]. GET /health and every POST /predict carry them; before json_ready, Starlette
refused them ("Out of range float values are not JSON compliant") and the service answered 500.
"""
import json
import math

from common.serving.requests import json_ready


def test_non_finite_floats_become_strings_everywhere():
    info = {"policy": {"mode": "fixed", "thresholds": [math.inf, math.inf, -math.inf]},
            "latency_ms": (1.5, math.nan), "nested": [{"x": -math.inf, "n": 3, "s": "inf"}], "ok": True}
    out = json_ready(info)
    assert out == {"policy": {"mode": "fixed", "thresholds": ["inf", "inf", "-inf"]},
                   "latency_ms": [1.5, "nan"], "nested": [{"x": "-inf", "n": 3, "s": "inf"}], "ok": True}
    text = json.dumps(out, allow_nan=False)  # what JSONResponse does
    assert [float(t) for t in json.loads(text)["policy"]["thresholds"]] == [math.inf, math.inf, -math.inf]


def test_finite_values_pass_unchanged():
    info = {"gflops_per_exit": [0.0025, 0.0064, 0.0121], "budget_range": [0.0025, 0.0121], "num_exits": 3}
    assert json_ready(info) == info
