"""The genetic algorithm: reproducible, feasible, and its lookup tables equal the exit rule."""
import itertools

import numpy as np
import pytest

from common.thresholds import (ExitScores, GeneticConfig, evaluate_thresholds, solve_exact, solve_genetic,
                               within_budget)
from common.thresholds.tables import ThresholdTables


def random_scores(seed, k_exits, n, levels=None):
    rng = np.random.default_rng(seed)
    s = rng.random((k_exits, n)) if levels is None else rng.integers(0, levels, size=(k_exits, n)) / levels
    correct = rng.random((k_exits, n)) < np.linspace(0.5, 0.8, k_exits)[:, None]
    return ExitScores(s, correct, np.cumsum(rng.uniform(0.2, 1.5, k_exits)))


def test_same_seed_same_thresholds():
    scores = random_scores(0, 3, 500)
    budgets = np.linspace(scores.gflops[0], scores.gflops[-1], 7)
    a = solve_genetic(scores, budgets, seed=3, generations=40)
    b = solve_genetic(scores, budgets, seed=3, generations=40)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    assert a.info["seed"] == 3 and a.info["generations"] == 40


@pytest.mark.parametrize("k_exits,n,levels,grid", [(2, 200, None, None), (3, 300, 7, None), (3, 400, None, 15),
                                                   (4, 150, None, 9)])
def test_feasible_and_never_better_than_exact(k_exits, n, levels, grid):
    scores = random_scores(k_exits * n, k_exits, n, levels)
    budgets = np.linspace(scores.gflops[0], scores.gflops[-1], 6)
    ga = solve_genetic(scores, budgets, grid_size=grid, generations=30)
    assert within_budget(ga.expected_gflops, ga.budgets).all()
    ex = solve_exact(scores, budgets)
    assert (ex.accuracy >= ga.accuracy).all()


@pytest.mark.parametrize("k_exits,grid", [(2, None), (3, 6), (4, 4)])
def test_lookup_tables_equal_the_exit_rule(k_exits, grid):
    scores = random_scores(k_exits, k_exits, 40, levels=5)
    tables = ThresholdTables(scores, grid_size=grid)
    for genes in itertools.product(*[range(s + 1) for s in tables.sizes]):
        ev = evaluate_thresholds(scores, tables.thresholds(np.array(genes)))
        assert tables.correct[genes] == ev.num_correct
        assert tables.cost[genes] == pytest.approx(ev.expected_gflops, rel=1e-12)
        assert tuple(tables.counts[(slice(None),) + genes]) == ev.exit_counts


def test_bad_config():
    scores = random_scores(0, 3, 50)
    with pytest.raises(ValueError, match="elite"):
        solve_genetic(scores, [scores.gflops[1]], elite=64)
    with pytest.raises(ValueError, match="budget"):
        solve_genetic(scores, [scores.gflops[-1] * 2])
