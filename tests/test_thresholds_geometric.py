"""The reference's geometric (MSDNet-style) schedule: hand-computed examples and a literal oracle."""
import math
from fractions import Fraction

import numpy as np
import pytest

from common.thresholds import (ExitScores, evaluate_thresholds, exit_indices, geometric_fractions,
                               geometric_thresholds, solve_geometric)

GFLOPS = [1.0, 2.0, 4.0]
# exit 0: three samples tied at 0.7 around the planned cut
S0 = [0.9, 0.8, 0.7, 0.7, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1]
# exit 1: samples 0 and 1 (already gone) score highest; the remaining ones tie at 0.6
S1 = [0.99, 0.99, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6, 0.2, 0.3]


def scores3(s0, s1):
    return np.array([s0, s1, np.zeros(len(s0))])


def test_fractions_are_normalised_powers_of_q():
    assert geometric_fractions(20, 3) == [Fraction(1, 3)] * 3  # q = 1
    f = geometric_fractions(10, 3)  # q = 1/2: 1/2, 1/4, 1/8 normalised
    assert f == [Fraction(4, 7), Fraction(2, 7), Fraction(1, 7)]
    # exact rationals: floor(111 * 100/111) is 100 (the reference's float32 gives 99)
    assert math.floor(111 * geometric_fractions(2, 3)[0]) == 100


def test_hand_example_with_ties_at_both_thresholds():
    s = scores3(S0, S1)
    # p = 20: fractions 1/3 each, floor(10/3) = 3 samples planned per exit
    th = geometric_thresholds(s, geometric_fractions(20, 3))
    # exit 0: 3rd largest of all = 0.7; all three 0.7s leave (>=), so 5 samples go
    # exit 1: remaining samples 5..9 have 0.6, 0.6, 0.6, 0.2, 0.3 -> 3rd largest 0.6 (samples 0, 1 with
    # 0.99 already left and do not count)
    assert th.tolist() == [0.7, 0.6, -np.inf]
    exits = exit_indices(s, th)
    assert exits.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    ev = evaluate_thresholds(ExitScores(s, np.ones_like(s, dtype=bool), GFLOPS), th)
    assert ev.expected_gflops == pytest.approx((5 * 1 + 3 * 2 + 2 * 4) / 10)


def test_hand_example_closed_exits():
    s = scores3(S0, S1)
    # p = 1, q = 1/20: fractions 400/421, 20/421, 1/421 -> floor(10 * .) = 9, 0, 0
    th = geometric_thresholds(s, geometric_fractions(1, 3))
    assert th.tolist() == [0.2, np.inf, -np.inf]  # 9th largest = 0.2; out_n = 0 keeps exit 1 closed
    assert exit_indices(s, th).tolist() == [0] * 9 + [2]
    # everyone ties at exit 0: all leave, so exit 1 has fewer samples left (0) than planned (3): closed
    flat = scores3([0.5] * 10, S1)
    assert geometric_thresholds(flat, geometric_fractions(20, 3)).tolist() == [0.5, np.inf, -np.inf]


def reference_oracle(scores, fractions):
    """The procedure of DESIGN.md §5 written as a literal loop (1-based count over a descending sort)."""
    k_exits, n = scores.shape
    t = [math.inf] * k_exits
    gone = [False] * n
    for k in range(k_exits - 1):
        out_n = math.floor(n * fractions[k])
        count = 0
        for i in sorted(range(n), key=lambda i: -scores[k][i]):
            if not gone[i]:
                count += 1
                if count == out_n:
                    t[k] = scores[k][i]
                    break
        gone = [gone[i] or scores[k][i] >= t[k] for i in range(n)]
    t[-1] = -math.inf
    return t


@pytest.mark.parametrize("k_exits,n", [(2, 7), (3, 23), (3, 60), (4, 41)])
def test_matches_literal_oracle_on_random_scores_with_ties(k_exits, n):
    rng = np.random.default_rng(n)
    s = rng.integers(0, 12, size=(k_exits, n)) / 12.0
    for p in range(1, 60):
        f = geometric_fractions(p, k_exits)
        assert geometric_thresholds(s, f).tolist() == reference_oracle(s, f)


def test_solve_geometric_curve():
    rng = np.random.default_rng(3)
    s = ExitScores(rng.random((3, 300)), rng.random((3, 300)) < 0.7, GFLOPS)
    curve = solve_geometric(s)
    assert curve.num_points == 59 and curve.solver == "geometric"
    np.testing.assert_array_equal(curve.budgets, curve.expected_gflops)
    assert (curve.thresholds[:, -1] == -np.inf).all()
    # larger p sends fewer samples to exit 0: cost rises along the schedule
    assert curve.expected_gflops[0] < curve.expected_gflops[-1]
    assert (np.diff(curve.exit_fractions[:, 0]) <= 0).all()
    for j in (0, 30, 58):
        ev = evaluate_thresholds(s, curve.thresholds[j])
        assert ev.accuracy == curve.accuracy[j] and ev.expected_gflops == curve.expected_gflops[j]
    with pytest.raises(ValueError, match="chooses its own budgets"):
        solve_geometric(s, [1.5])
