"""common.adaptive's host-side bookkeeping, on its own: the same decisions as the offline rule, rows back in order."""
import numpy as np
import pytest

from common.adaptive import ExitTracker, leave_mask, offline_exits, stage_needs


class _Exit:
    def __init__(self, feature_reuse, relation_reuse):
        self.feature_reuse, self.relation_reuse = feature_reuse, relation_reuse


def _run(logits, thresholds):
    """The adaptive loop of both frameworks with numpy as the 'framework': (exit index, logits in input order)."""
    k_exits, n, _ = logits.shape
    track, pieces = ExitTracker(n, k_exits), []
    for k in range(k_exits):
        if track.done:
            break
        stage_logits = logits[k][track.rows]  # what exit k computes for the rows still in
        step = track.record(k, None if k == k_exits - 1 else leave_mask(stage_logits, thresholds, k))
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
