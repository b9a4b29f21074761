"""Exact solver: brute force over every threshold combination, larger O(N^2) checks, and the comparison
with the geometric schedule and the GA on synthetic realistic outputs."""
import itertools

import numpy as np
import pytest

from common.thresholds import (ExitScores, evaluate_thresholds, solve_exact, solve_genetic, solve_geometric,
                               synthetic_exit_outputs, validate_budgets, within_budget)
from common.thresholds.exact import _two_thresholds


def brute_force(scores: ExitScores, budgets) -> np.ndarray:
    """Most correct samples per budget over all threshold combinations (each exit: +inf or a score)."""
    cands = [np.concatenate(([np.inf], np.unique(scores.scores[k]))) for k in range(scores.num_exits - 1)]
    best = np.full(len(budgets), -1)
    for combo in itertools.product(*cands):
        ev = evaluate_thresholds(scores, combo)
        better = within_budget(ev.expected_gflops, budgets) & (ev.num_correct > best)
        best[better] = ev.num_correct
    return best


def random_case(rng, k_exits, n):
    if rng.random() < 0.5:  # many ties
        s = rng.integers(0, 4, size=(k_exits, n)) / 4.0
    else:
        s = rng.random((k_exits, n))
    correct = rng.random((k_exits, n)) < rng.uniform(0.3, 0.9)
    gflops = np.cumsum(rng.uniform(0.1, 2.0, size=k_exits))
    scores = ExitScores(s, correct, gflops)
    # random budgets, both ends, and costs achieved exactly by random threshold sets (knife edges)
    hits = [evaluate_thresholds(scores, [rng.choice(np.append(s[k], np.inf)) for k in range(k_exits - 1)])
            .expected_gflops for _ in range(4)]
    budgets = np.concatenate([rng.uniform(gflops[0], gflops[-1], 4), [gflops[0], gflops[-1]], hits])
    return scores, validate_budgets(budgets, gflops)


@pytest.mark.parametrize("k_exits,max_n,cases", [(2, 12, 60), (3, 12, 60), (4, 8, 25)])
def test_exact_matches_brute_force(k_exits, max_n, cases):
    rng = np.random.default_rng(100 + k_exits)
    for _ in range(cases):
        scores, budgets = random_case(rng, k_exits, int(rng.integers(1, max_n + 1)))
        curve = solve_exact(scores, budgets, block_size=int(rng.integers(1, 6)))
        expected = brute_force(scores, curve.budgets)
        got = np.rint(curve.accuracy * scores.num_samples).astype(int)
        np.testing.assert_array_equal(got, expected)
        assert within_budget(curve.expected_gflops, curve.budgets).all()
        assert curve.info["exact"] is True


def all_pairs_best(scores: ExitScores, budgets) -> np.ndarray:
    """O(N^2) reference for 3 exits: every exit-0 threshold, then every exit-1 threshold (vectorised)."""
    s, c, g = scores.scores, scores.correct, scores.gflops
    n = scores.num_samples
    best = np.full(len(budgets), -1)
    for t0 in np.concatenate(([np.inf], np.unique(s[0]))):
        leave0 = s[0] >= t0
        rest = np.flatnonzero(~leave0)
        t1 = np.concatenate(([np.inf], np.unique(s[1][rest])))  # (M,)
        leave1 = s[1][rest][None, :] >= t1[:, None]  # (M, R)
        correct = c[0][leave0].sum() + (leave1 * c[1][rest] + ~leave1 * c[2][rest]).sum(1)
        n1 = leave1.sum(1)
        cost = (g[0] * leave0.sum() + g[1] * n1 + g[2] * (rest.size - n1)) / n
        ok = within_budget(cost[:, None], budgets[None, :])
        best = np.maximum(best, np.where(ok, correct[:, None], -1).max(0))
    return best


@pytest.mark.parametrize("n,block", [(300, 7), (300, None), (257, 1), (400, 64)])
def test_three_exits_larger_against_all_pairs(n, block):
    out = synthetic_exit_outputs(n, num_classes=5, seed=n)
    scores = ExitScores.from_outputs(out)
    s = np.round(scores.scores, 2)  # add ties
    scores = ExitScores(s, scores.correct, scores.gflops)
    budgets = np.linspace(scores.gflops[0], scores.gflops[-1], 23)
    curve = solve_exact(scores, budgets, block_size=block)
    np.testing.assert_array_equal(np.rint(curve.accuracy * n).astype(int), all_pairs_best(scores, budgets))


def test_block_size_does_not_change_the_optimum():
    rng = np.random.default_rng(7)
    n = 500
    s = rng.integers(0, 40, size=(3, n)) / 40.0
    c = (rng.random((3, n)) < [[0.5], [0.65], [0.75]]).astype(np.int64)
    limits = n * np.linspace(1.0, 3.0, 17)
    ref = _two_thresholds(s[0], s[1], c[0], c[1], c[2], 1.0, 2.0, 3.0, limits, block_size=n)[0]
    for block in (1, 2, 3, 16, 99):
        got = _two_thresholds(s[0], s[1], c[0], c[1], c[2], 1.0, 2.0, 3.0, limits, block_size=block)[0]
        np.testing.assert_array_equal(got, ref)


def test_four_exits_with_capped_candidates_is_within_its_bound():
    rng = np.random.default_rng(11)
    n = 60
    scores = ExitScores(rng.random((4, n)), rng.random((4, n)) < [[0.5], [0.6], [0.7], [0.75]], [1, 2, 3, 4])
    budgets = np.linspace(1.0, 4.0, 9)
    exact = solve_exact(scores, budgets, max_outer_candidates=None)
    capped = solve_exact(scores, budgets, max_outer_candidates=8)
    assert exact.info["exact"] and not capped.info["exact"]
    gap = capped.info["max_accuracy_gap"]
    assert 0 < gap < 1
    assert (capped.accuracy <= exact.accuracy + 1e-12).all()
    assert (capped.accuracy >= exact.accuracy - gap - 1e-12).all()


@pytest.fixture(scope="module")
def synthetic_splits():
    out = synthetic_exit_outputs(6000, num_classes=20, seed=5)
    idx = np.random.default_rng(0).permutation(out.num_samples)
    return ExitScores.from_outputs(out, indices=idx[:3000]), ExitScores.from_outputs(out, indices=idx[3000:])


def test_exact_never_worse_than_geometric_and_genetic_on_calibration(synthetic_splits):
    calib, test = synthetic_splits
    geo = solve_geometric(calib)
    budgets = geo.budgets
    ga = solve_genetic(calib, budgets, generations=60)
    ex = solve_exact(calib, budgets)
    assert within_budget(ex.expected_gflops, ex.budgets).all()
    np.testing.assert_array_equal(ex.budgets, ga.budgets)
    assert (ex.accuracy >= ga.accuracy).all()  # same budgets
    for other in (geo, ga):  # and at exactly the cost each point of the others reached
        at_cost = solve_exact(calib, other.expected_gflops)
        pos = np.searchsorted(at_cost.budgets, other.expected_gflops)
        np.testing.assert_array_equal(at_cost.budgets[pos], other.expected_gflops)
        assert (at_cost.accuracy[pos] >= other.accuracy).all()
        assert within_budget(at_cost.expected_gflops[pos], other.expected_gflops).all()
    # the realistic data really separates the solvers somewhere
    assert (ex.accuracy > geo.accuracy).any()
    # the test-split numbers are what the benchmark reports next to each other
    test_acc = {c.solver: [evaluate_thresholds(test, t).accuracy for t in c.thresholds] for c in (geo, ga, ex)}
    assert all(len(v) == len(budgets) for v in test_acc.values())


def test_exact_budget_errors():
    rng = np.random.default_rng(0)
    scores = ExitScores(rng.random((3, 20)), rng.random((3, 20)) < 0.5, [1.0, 2.0, 3.0])
    for bad in ([0.5], [3.5], [np.nan], [1.5, np.inf], []):
        with pytest.raises(ValueError, match="budget"):
            solve_exact(scores, bad)
    with pytest.raises(ValueError, match=r"outside \[1, 3\]"):
        solve_exact(scores, [2.0, 0.99])
    curve = solve_exact(scores, [3.0, 1.0, 2.0, 2.0])  # sorted and de-duplicated
    assert curve.budgets.tolist() == [1.0, 2.0, 3.0]
    assert curve.exit_fractions[0].tolist() == [1.0, 0.0, 0.0]  # budget = cost of exit 1
