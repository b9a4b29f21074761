"""common.adaptive's host-side bookkeeping, on its own: the same decisions as the offline rule, rows back in order."""
import numpy as np
import pytest

from common.adaptive import ExitTracker, leave_mask, offline_exits, resolve_thresholds, stage_needs
from common.thresholds import ThresholdCurve


class _Exit:
    def __init__(self, feature_reuse, relation_reuse):
        self.feature_reuse, self.relation_reuse = feature_reuse, relation_reuse


def _run(logits, thresholds):
    """The adaptive loop of both frameworks with numpy as the 'framework': (exit index, logits in input order)."""
    k_exits, n, _ = logits.shape
    track, pieces = ExitTracker(n, k_exits, np.asarray(thresholds, dtype=np.float64)), []
    for k in range(k_exits):
        if track.done:
            break
        stage_logits = logits[k][track.rows]  # what exit k computes for the rows still in
        step = track.record(k, None if k == k_exits - 1 else leave_mask(stage_logits, track.active_thresholds(), k))
        if step.num_left:
            pieces.append(stage_logits if step.leave is None else stage_logits[step.leave])
        if step.done:
            break
    out = np.concatenate(pieces)
    inverse = track.inverse_order()
    return track, (out if inverse is None else out[inverse])


@pytest.mark.parametrize("thresholds", [[0.5, 0.4, -np.inf], [np.inf, np.inf, -np.inf], [-np.inf, 0.3, -np.inf],
                                        [0.35, np.inf, -np.inf]])
def test_tracker_reproduces_the_offline_rule_and_the_input_order(thresholds):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 257, 10)).astype(np.float32) * 2
    t = np.asarray(thresholds)
    track, out = _run(logits, t)
    expected = offline_exits(logits, t)
    np.testing.assert_array_equal(track.exit_index, expected)
    assert track.counts == np.bincount(expected, minlength=3).tolist()
    np.testing.assert_array_equal(out, logits[expected, np.arange(257)])  # each sample's own exit, input order


def test_tracker_edge_cases():
    track = ExitTracker(0, 3)
    assert track.done and track.inverse_order() is None
    track = ExitTracker(4, 2)
    step = track.record(0, np.array([False, False, False, False]))
    assert (step.num_left, step.leave is not None, step.keep, step.done) == (0, True, None, False)  # nothing to gather
    step = track.record(1, None)
    assert step.done and step.leave is None and track.inverse_order() is None and track.counts == [0, 4]
    with pytest.raises(ValueError, match="decision for"):
        ExitTracker(3, 2).record(0, np.ones(2, dtype=bool))


def test_stage_needs_follows_the_next_exit():
    exits = [_Exit(False, False), _Exit(True, False), _Exit(True, True)]
    assert stage_needs(exits, 0) == (True, False, False)  # exit 1 reuses features only: fused attention allowed
    assert stage_needs(exits, 1) == (True, True, True)
    assert stage_needs(exits, 2) == (False, False, False)  # the last exit hands nothing on
    assert stage_needs(exits, 2, fast=False) == (False, False, True)


# ---- per-sample thresholds: requests with different budgets in one batch ---------------------------------------

def _per_row_offline(logits, rows):
    """The offline rule applied to each sample alone, with its own thresholds."""
    return np.array([offline_exits(logits[:, i:i + 1], rows[i])[0] for i in range(logits.shape[1])])


def test_per_sample_thresholds_follow_their_rows_through_the_tracker():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 101, 10)).astype(np.float32) * 2
    sets = np.array([[0.5, 0.4, -np.inf], [np.inf, np.inf, -np.inf], [-np.inf, 0.3, -np.inf], [0.35, np.inf, 7.0]])
    rows, _ = resolve_thresholds(sets[rng.integers(0, 4, size=101)], 3, batch_size=101)
    assert rows.shape == (101, 3) and (rows[:, -1] == -np.inf).all()  # the last exit's value is ignored
    track, out = _run(logits, rows)
    expected = _per_row_offline(logits, rows)
    np.testing.assert_array_equal(track.exit_index, expected)
    np.testing.assert_array_equal(offline_exits(logits, rows), expected)  # the vectorised row-by-row rule
    np.testing.assert_array_equal(out, logits[expected, np.arange(101)])
    # every row with the same thresholds == the shared thresholds
    shared, _ = _run(logits, sets[0])
    same, _ = _run(logits, np.tile(sets[0], (101, 1)))
    np.testing.assert_array_equal(shared.exit_index, same.exit_index)


def test_active_thresholds_and_leave_mask_shapes():
    rows = np.array([[0.1, -np.inf], [0.2, -np.inf], [0.3, -np.inf]])
    track = ExitTracker(3, 2, rows)
    np.testing.assert_array_equal(track.active_thresholds(), rows)
    track.record(0, np.array([False, True, False]))
    np.testing.assert_array_equal(track.active_thresholds(), rows[[0, 2]])
    assert ExitTracker(3, 2, rows[0]).active_thresholds().shape == (2,)  # shared stays shared
    logits = np.log(np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]))  # confidence 0.6 for all
    np.testing.assert_array_equal(leave_mask(logits, [[0.7, -np.inf], [0.6, -np.inf], [0.5, -np.inf]], 0),
                                  [False, True, True])  # `>=`, row by row
    assert leave_mask(logits, rows, 1).all()
    with pytest.raises(ValueError, match="thresholds for 2 samples, 3 reached"):
        leave_mask(logits, rows[:2], 0)
    with pytest.raises(ValueError, match=r"expected \(2,\) or \(4, 2\)"):
        ExitTracker(4, 2, rows)
    with pytest.raises(ValueError, match="without thresholds"):
        ExitTracker(4, 2).active_thresholds()


def test_resolve_per_sample_thresholds_and_budgets():
    rows, criterion = resolve_thresholds([[0.9, 0.8], [0.1, np.inf]], 3, "entropy")
    assert criterion == "entropy"
    np.testing.assert_array_equal(rows, [[0.9, 0.8, -np.inf], [0.1, np.inf, -np.inf]])
    assert resolve_thresholds([0.9, 0.8], 3)[0].shape == (3,)
    with pytest.raises(ValueError, match=r"shape \(B, 2\) or \(B, 3\), got \(2, 4\)"):
        resolve_thresholds(np.zeros((2, 4)), 3)
    with pytest.raises(ValueError, match="contain NaN"):
        resolve_thresholds([[0.5, np.nan]], 3)
    with pytest.raises(ValueError, match="for 2 samples, the batch has 3"):
        resolve_thresholds([[0.5, 0.5], [0.5, 0.5]], 3, batch_size=3)
    gflops = np.array([1.0, 2.0, 4.0])
    curve = ThresholdCurve(solver="manual", criterion="confidence", gflops=gflops, budgets=[1, 2, 4],
                           thresholds=[[-np.inf, -np.inf, -np.inf], [0.5, -np.inf, -np.inf], [np.inf, np.inf, -np.inf]],
                           accuracy=[0.5, 0.7, 0.9], expected_gflops=[1, 2, 4],
                           exit_fractions=[[1, 0, 0], [0.5, 0.5, 0], [0, 0, 1]])
    rows, _ = resolve_thresholds(curve, 3, budget=[4.0, 1.0, 2.5, 4.0], batch_size=4)
    np.testing.assert_array_equal(rows, curve.thresholds[[2, 0, 1, 2]])  # each sample its own budget
    np.testing.assert_array_equal(resolve_thresholds(curve, 3, budget=2.5)[0], curve.thresholds[1])
    with pytest.raises(ValueError, match="no point of this manual curve fits a budget of 0.5"):
        resolve_thresholds(curve, 3, budget=[2.0, 0.5])
    with pytest.raises(ValueError, match="finite"):
        resolve_thresholds(curve, 3, budget=[np.nan])
