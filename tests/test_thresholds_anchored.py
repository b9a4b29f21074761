"""The anchored solver (the default): spends its budget, reaches the last exit, moves away from the geometric
schedule only on significant calibration evidence, and what a run's users load is its curve."""
import itertools
import json

import numpy as np
import pytest

from common.thresholds import (ExitScores, ThresholdCurve, ThresholdTables, calibration_test_split,
                               curve_from_results, evaluate_thresholds, solve, synthetic_exit_outputs, within_budget)
from common.thresholds.generalisation import compare_matched_cost, matching_gflops, points_on
from common.thresholds.pipeline import default_solver_of
from common.thresholds.rule import exit_indices


def halves(n, seed, exit_accuracy=None):
    o = synthetic_exit_outputs(n, 3, 10, seed=seed, exit_accuracy=exit_accuracy)
    calib, test = calibration_test_split(n, o.labels, 0.5, seed)
    return ExitScores.from_outputs(o, indices=calib), ExitScores.from_outputs(o, indices=test)


@pytest.fixture(scope="module")
def small():
    """600 calibration / 600 test samples: too few to trust a deviation from the reference schedule."""
    calib, test = halves(1200, 3)
    return calib, test, {name: solve(name, calib) for name in ("anchored", "geometric", "exact")}


def test_spends_the_budget_and_never_exceeds_it(small):
    calib, _, curves = small
    a, ex = curves["anchored"], curves["exact"]
    assert within_budget(a.expected_gflops, a.budgets).all()
    assert (a.expected_gflops >= 0.9999 * a.budgets).all()  # every point spends its whole budget
    assert (ex.expected_gflops / ex.budgets).min() < 0.9  # the exact optimum leaves budget unspent ...
    shared = np.searchsorted(a.budgets, ex.budgets)
    assert (a.expected_gflops[shared] >= ex.expected_gflops - 1e-12).all()  # ... where anchored does not
    assert np.all(np.diff(a.expected_gflops) >= 0)  # monotone: more budget, more GFLOPs spent
    for b in np.linspace(a.budgets[0], calib.gflops[-1], 40):  # what forward_adaptive users get: the point
        j = a.index_for_budget(b)  # solved for the largest budget that fits
        assert within_budget(a.expected_gflops[j], b)
        assert a.budgets[j] == a.budgets[a.budgets <= b * (1 + 1e-12)].max()


def test_reaches_the_last_exit_at_or_below_its_cost(small):
    calib, test, curves = small
    a = curves["anchored"]
    assert a.budgets[-1] == calib.gflops[-1]
    assert (a.accuracy[a.expected_gflops <= calib.gflops[-1]] >= calib.correct[-1].mean()).any()
    assert matching_gflops(points_on(a, test), test) <= calib.gflops[-1]


def test_without_evidence_it_is_the_reference_schedule(small):
    calib, test, curves = small
    a, g = curves["anchored"], curves["geometric"]
    assert a.info["points_from_grid"] == 0
    np.testing.assert_array_equal(a.thresholds[:-1], g.thresholds)  # + the last exit's budget
    comp = compare_matched_cost(points_on(a, test), points_on(g, test), test)
    assert (comp.mean_gap, comp.worst_gap, comp.fraction_at_or_above) == (0.0, 0.0, 1.0)
    assert solve("anchored", calib, z=0.0).info["points_from_grid"] > 40  # no safety margin: it chases noise


def test_leaves_a_poor_schedule_on_significant_evidence_and_wins_on_held_out_data():
    # exit 3 is barely better than exit 2, so the geometric schedule wastes GFLOPs on it
    calib, test = halves(12000, 5, exit_accuracy=(0.6, 0.78, 0.8))
    a, g = solve("anchored", calib), solve("geometric", calib)
    assert a.info["points_from_grid"] >= 25
    comp = compare_matched_cost(points_on(a, test), points_on(g, test), test)
    assert comp.fraction_at_or_above >= 0.9 and comp.worst_gap > -0.001 and comp.mean_gap > 0.005  # the targets
    assert comp.match_gflops < 0.8 * comp.reference_match_gflops
    # every deviation passes the safe-improvement rule: gain > z * sqrt(discordant samples)
    family = solve("anchored", calib, z=1e9)  # never deviates: the anchors
    cols = np.arange(calib.num_samples)
    for t, t0, source in zip(a.thresholds, family.thresholds, a.info["source"]):
        if source != "grid":
            continue
        right = calib.correct[exit_indices(calib.scores, t), cols]
        right0 = calib.correct[exit_indices(calib.scores, t0), cols]
        assert int(right.sum()) - int(right0.sum()) > a.info["z"] * np.sqrt(np.sum(right != right0))


def test_tables_weighted_sums_equal_the_exit_rule():
    rng = np.random.default_rng(0)
    for k_exits, grid in ((2, None), (3, 4), (4, 3)):
        s = ExitScores(rng.integers(0, 6, size=(k_exits, 30)) / 6, rng.random((k_exits, 30)) < 0.6,
                       np.cumsum(rng.uniform(0.2, 1.0, k_exits)))
        weights = rng.integers(-2, 3, size=(k_exits, 30))
        tables = ThresholdTables(s, grid_size=grid)
        table = tables.weighted(weights)
        for index in itertools.product(*[range(n + 1) for n in tables.sizes]):
            exits = exit_indices(s.scores, tables.thresholds(index))
            assert table[index] == weights[exits, np.arange(30)].sum()
            assert tuple(tables.counts[(slice(None),) + index]) == evaluate_thresholds(
                s, tables.thresholds(index)).exit_counts


def test_the_loader_picks_the_default_solver(small, tmp_path):
    """thresholds.json (written by run_thresholds, see test_solve_thresholds_cli) and checkpoint extras."""
    curves = {n: c.to_dict() for n, c in small[2].items()}
    run = tmp_path / "run"
    run.mkdir()
    results = {"format": "dvt-threshold-results", "default_solver": default_solver_of(curves),
               "solvers": {n: {"curve": c} for n, c in curves.items()}}
    (run / "thresholds.json").write_text(json.dumps(results))
    loaded = ThresholdCurve.load(run)
    assert loaded.solver == "anchored" and loaded.info["select"] == "largest_budget"
    np.testing.assert_array_equal(loaded.thresholds, small[2]["anchored"].thresholds)
    assert ThresholdCurve.load(run / "thresholds.json", solver="exact").solver == "exact"
    # a checkpoint's extras (MindSpore keeps them as JSON text), and results without a default
    extras = {"thresholds": json.dumps(curves), "default_solver": json.dumps("geometric")}
    assert curve_from_results(extras).solver == "geometric"
    assert curve_from_results({"thresholds": curves}).solver == "anchored"
    assert curve_from_results({"thresholds": {"geometric": curves["geometric"], "exact": curves["exact"]}}).solver \
        == "exact"
    assert default_solver_of(("exact", "geometric")) == "exact"  # anchored not solved: the first listed
    with pytest.raises(ValueError, match="no 'genetic' curve; the results hold"):
        ThresholdCurve.load(run, solver="genetic")
    with pytest.raises(FileNotFoundError, match="thresholds.json"):
        ThresholdCurve.load(tmp_path)
