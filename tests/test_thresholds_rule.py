"""Exit rule, criteria, evaluation, anytime accuracy and random exit (common.thresholds)."""
import subprocess
import sys

import numpy as np
import pytest

from common.thresholds import (ExitScores, anytime_accuracy, budget_grid, random_exit_curve, solve_exact,
                               synthetic_exit_outputs, entropy_score, evaluate_exits, evaluate_random_exit,
                               evaluate_thresholds, exit_counts_for_fractions, exit_indices, exit_mask,
                               exit_thresholds, max_softmax, random_exits)

SCORES = np.array([[0.9, 0.5, 0.5, 0.2, 0.7],
                   [0.1, 0.8, 0.6, 0.3, 0.9],
                   [0.0, 0.0, 0.0, 0.0, 0.0]])


def test_first_exit_at_or_above_threshold_and_last_exit_takes_the_rest():
    # exit 0 at >= 0.5 (ties leave), exit 1 at >= 0.6
    assert exit_indices(SCORES, [0.5, 0.6, 0.99]).tolist() == [0, 0, 0, 2, 0]
    assert exit_indices(SCORES, [0.7, 0.6]).tolist() == [0, 1, 1, 2, 0]
    # +inf closes an exit; the last threshold is ignored (always -inf)
    assert exit_indices(SCORES, [np.inf, np.inf, 5.0]).tolist() == [2] * 5
    assert exit_indices(SCORES, [np.inf, 0.8]).tolist() == [2, 1, 2, 2, 1]
    assert exit_indices(SCORES, [-np.inf, 0.0]).tolist() == [0] * 5


def test_exit_mask_is_the_same_rule_as_exit_indices():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(4, 50)) / 4
    th = exit_thresholds([0.75, 0.5, 0.25], 4)
    left = np.arange(50)
    exits = np.full(50, -1)
    for k in range(4):  # what a batched early-exit inference loop does
        leave = exit_mask(scores[k, left], th, k)
        exits[left[leave]] = k
        left = left[~leave]
    assert left.size == 0
    np.testing.assert_array_equal(exits, exit_indices(scores, th))


def test_threshold_validation():
    assert exit_thresholds([0.3, 0.2], 3).tolist() == [0.3, 0.2, -np.inf]
    assert exit_thresholds([0.3, 0.2, 0.9], 3)[-1] == -np.inf
    with pytest.raises(ValueError, match="needs 2 or 3 thresholds"):
        exit_thresholds([0.3], 3)
    with pytest.raises(ValueError, match="NaN"):
        exit_indices(SCORES, [np.nan, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        exit_indices(np.full((2, 3), np.nan), [0.5])


def test_max_softmax_is_stable_and_exact():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(max_softmax(logits), p.max(-1), rtol=1e-12)
    huge = np.array([[1e4, 0.0, -1e4], [3e38, 3e38, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(max_softmax(huge), [1.0, 0.5])
    assert max_softmax(huge).dtype == np.float64


def test_entropy_score_is_one_minus_normalised_entropy():
    uniform = np.zeros((1, 5))
    one_hot = np.array([[1e4, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(entropy_score(uniform), [0.0], atol=1e-12)
    np.testing.assert_allclose(entropy_score(one_hot), [1.0], atol=1e-12)
    x = np.array([[2.0, 1.0, 0.0]])
    p = np.exp(x) / np.exp(x).sum()
    np.testing.assert_allclose(entropy_score(x), 1 + (p * np.log(p)).sum() / np.log(3))


def test_evaluate_thresholds_hand_example():
    correct = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 0, 1, 1]], dtype=bool)
    scores = ExitScores(SCORES, correct, [1.0, 2.0, 4.0])
    ev = evaluate_thresholds(scores, [0.7, 0.6])  # exits [0, 1, 1, 2, 0]
    assert ev.exit_counts == (2, 2, 1)
    assert ev.num_correct == 1 + 1 + 1 + 1 + 0
    assert ev.accuracy == pytest.approx(4 / 5)
    assert ev.expected_gflops == pytest.approx((2 * 1 + 2 * 2 + 1 * 4) / 5)
    assert ev.exit_fractions == pytest.approx((0.4, 0.4, 0.2))
    np.testing.assert_allclose(anytime_accuracy(correct), [0.4, 0.6, 0.8])
    with pytest.raises(ValueError, match="exit indices"):
        evaluate_exits(np.array([0, 1, 3, 0, 0]), correct, [1.0, 2.0, 4.0])


def test_exit_scores_validation():
    with pytest.raises(ValueError, match="shape of scores"):
        ExitScores(np.zeros((3, 4)), np.zeros((3, 5), bool), [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        ExitScores(np.array([[0.1, np.nan], [0.2, 0.3]]), np.zeros((2, 2), bool), [1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        ExitScores(np.zeros((2, 2)), np.zeros((2, 2), bool), [2, 1])
    with pytest.raises(ValueError, match="K >= 2"):
        ExitScores(np.zeros((1, 2)), np.zeros((1, 2), bool), [1])
    with pytest.raises(ValueError, match="unknown exit criterion"):
        ExitScores(np.zeros((2, 2)), np.zeros((2, 2), bool), [1, 2], criterion="margin")
    with pytest.raises(ValueError, match="has no score"):
        ExitScores(np.zeros((2, 2)), np.zeros((2, 2), bool), [1, 2], criterion="random")


def test_random_exit_matches_proportions_and_is_seeded():
    counts = exit_counts_for_fractions(10, [0.25, 0.25, 0.5])
    assert counts.tolist() == [3, 2, 5] and counts.sum() == 10
    exits = random_exits(1000, [0.5, 0.3, 0.2], seed=4)
    assert np.bincount(exits).tolist() == [500, 300, 200]
    np.testing.assert_array_equal(exits, random_exits(1000, [0.5, 0.3, 0.2], seed=4))
    assert not np.array_equal(exits, random_exits(1000, [0.5, 0.3, 0.2], seed=5))
    with pytest.raises(ValueError, match="non-negative"):
        exit_counts_for_fractions(10, [0.5, -0.1, 0.6])

    rng = np.random.default_rng(0)
    scores = ExitScores(rng.random((3, 400)), rng.random((3, 400)) < 0.7, [1.0, 2.0, 3.0])
    ev = evaluate_thresholds(scores, [0.6, 0.5])
    rnd = evaluate_random_exit(scores, ev.exit_fractions, seed=1)
    assert rnd.exit_counts == ev.exit_counts  # same proportions, hence the same cost
    assert rnd.expected_gflops == pytest.approx(ev.expected_gflops)


def test_random_exit_curve_spends_the_same_and_is_less_accurate():
    scores = ExitScores.from_outputs(synthetic_exit_outputs(3000, seed=8))
    curve = solve_exact(scores, budget_grid(scores.gflops, 7)[1:-1])
    rnd = random_exit_curve(curve, scores, seed=0)
    assert rnd.criterion == "random" and rnd.solver == "exact"
    np.testing.assert_allclose(rnd.expected_gflops, curve.expected_gflops)
    np.testing.assert_array_equal(rnd.exit_fractions, curve.exit_fractions)
    assert (rnd.accuracy < curve.accuracy).all()
    assert rnd.to_dict()["criterion"] == "random"


def test_common_thresholds_imports_no_framework():
    code = ("import sys, common.thresholds, common.thresholds.plots; "
            "assert 'torch' not in sys.modules and 'mindspore' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
