"""Per-exit outputs (.npz), threshold curves (JSON / checkpoint dicts), budgets, splits, synthetic data."""
import json

import numpy as np
import pytest

from common.thresholds import (ExitOutputsError, ExitScores, ThresholdCurve, anytime_accuracy, budget_grid,
                               calibration_test_split, evaluate_thresholds, load_exit_outputs, save_exit_outputs,
                               solve_exact, synthetic_exit_outputs, validate_budgets)

GFLOPS = [0.4725, 1.4625, 3.4975]


def small_outputs(n=30, c=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, n, c)).astype(np.float32), rng.integers(0, c, size=n)


# ---- .npz exit outputs --------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    logits, labels = small_outputs()
    path = save_exit_outputs(tmp_path / "val.npz", logits, labels, GFLOPS, model="dvt_t2t_vit_12", split="val",
                             sample_ids=np.arange(100, 130))
    out = load_exit_outputs(path)
    np.testing.assert_array_equal(out.logits, logits)
    np.testing.assert_array_equal(out.labels, labels)
    np.testing.assert_array_equal(out.gflops, GFLOPS)
    assert out.logits.dtype == np.float32 and out.labels.dtype == np.int64 and out.gflops.dtype == np.float64
    assert (out.model, out.split) == ("dvt_t2t_vit_12", "val")
    assert out.sample_ids.tolist() == list(range(100, 130))
    assert (out.num_exits, out.num_samples, out.num_classes) == (3, 30, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.npz"]  # no temporary files left
    sub = out.subset([3, 1], split="calibration")
    assert sub.sample_ids.tolist() == [103, 101] and sub.split == "calibration"
    with np.load(path) as raw:  # the documented layout
        assert set(raw.files) == {"logits", "labels", "gflops", "sample_ids", "model", "split", "format",
                                  "format_version"}
        assert str(raw["format"]) == "dvt-exit-outputs" and int(raw["format_version"]) == 1


@pytest.mark.parametrize("change,match", [
    (lambda l, y, g: (l[0], y, g), "shape \\(exits K, samples N, classes C\\)"),
    (lambda l, y, g: (l, y[:-1], g), "labels must have shape"),
    (lambda l, y, g: (l, y, g[:2]), "one cumulative cost per exit"),
    (lambda l, y, g: (l, y, [1.0, 0.5, 2.0]), "strictly increasing"),
    (lambda l, y, g: (l, y, [0.0, 0.5, 2.0]), "finite and positive"),
    (lambda l, y, g: (l, y + 10, g), "outside \\[0, 4\\)"),
    (lambda l, y, g: (l, y + 0.5, g), "integer class indices"),
    (lambda l, y, g: (np.where(np.arange(4) == 2, np.nan, l).astype(np.float32), y, g), "NaN or infinity"),
    (lambda l, y, g: (l[:, :, :1], y * 0, g), "at least 2 classes"),
])
def test_bad_outputs_are_refused_and_nothing_is_written(tmp_path, change, match):
    logits, labels = small_outputs()
    with pytest.raises(ExitOutputsError, match=match):
        save_exit_outputs(tmp_path / "bad.npz", *change(logits, labels, GFLOPS))
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_exit_outputs(tmp_path / "missing.npz")
    np.savez(tmp_path / "partial.npz", logits=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ExitOutputsError, match="missing array"):
        load_exit_outputs(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ExitOutputsError, match="not a readable"):
        load_exit_outputs(tmp_path / "junk.npz")
    logits, labels = small_outputs()
    logits[1, 2, 3] = np.inf
    np.savez(tmp_path / "inf.npz", logits=logits, labels=labels, gflops=np.array(GFLOPS))
    with pytest.raises(ExitOutputsError, match="inf.npz.*exit 1, sample 2, class 3"):
        load_exit_outputs(tmp_path / "inf.npz")


# ---- curves ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def curve_and_scores():
    scores = ExitScores.from_outputs(synthetic_exit_outputs(800, seed=2))
    return solve_exact(scores, budget_grid(scores.gflops, 9)), scores


def test_curve_json_round_trip(curve_and_scores):
    curve, _ = curve_and_scores
    text = json.dumps(curve.to_dict(), allow_nan=False)  # strict JSON: +/-inf are strings
    back = ThresholdCurve.from_dict(json.loads(text))
    for name in ("gflops", "budgets", "thresholds", "accuracy", "expected_gflops", "exit_fractions"):
        np.testing.assert_array_equal(getattr(back, name), getattr(curve, name))
    assert (back.solver, back.criterion, back.info) == (curve.solver, curve.criterion, curve.info)
    with pytest.raises(ValueError, match="lacks"):
        ThresholdCurve.from_dict({"solver": "x"})


def test_thresholds_for_budget_picks_best_point_that_fits(curve_and_scores):
    curve, scores = curve_and_scores
    for budget in np.linspace(scores.gflops[0], scores.gflops[-1], 13):
        th = curve.thresholds_for_budget(budget)
        ev = evaluate_thresholds(scores, th)
        assert ev.expected_gflops <= budget + 1e-9
        fits = curve.expected_gflops <= budget + 1e-9
        assert ev.accuracy == curve.accuracy[fits].max()
    with pytest.raises(ValueError, match="no point"):
        curve.thresholds_for_budget(scores.gflops[0] * 0.5)
    with pytest.raises(ValueError, match="finite"):
        curve.thresholds_for_budget(float("nan"))


def test_curve_validation():
    with pytest.raises(ValueError, match="thresholds must have shape"):
        ThresholdCurve("x", "confidence", GFLOPS, [1.0], np.zeros((1, 2)), [0.5], [1.0], [[1, 0, 0]])
    with pytest.raises(ValueError, match="unknown exit criterion"):
        ThresholdCurve("x", "margin", GFLOPS, [1.0], np.zeros((1, 3)), [0.5], [1.0], [[1, 0, 0]])


# ---- budgets ---------------------------------------------------------------------------------------
def test_validate_budgets():
    assert validate_budgets([3.0, 0.4725, 3.0, 1.0], GFLOPS).tolist() == [0.4725, 1.0, 3.0]
    assert validate_budgets([3.4975 + 1e-12], GFLOPS).tolist() == [3.4975]  # rounding is tolerated
    for bad, match in (([], "no budgets"), ([np.nan], "finite"), ([0.3], "outside"), ([3.6], "outside"),
                       (["a"], "numbers")):
        with pytest.raises(ValueError, match=match):
            validate_budgets(bad, GFLOPS)
    np.testing.assert_allclose(budget_grid(GFLOPS, 3), [0.4725, 1.985, 3.4975])


# ---- splits ----------------------------------------------------------------------------------------
def test_calibration_test_split_is_seeded_disjoint_and_stratified():
    labels = np.repeat(np.arange(5), [100, 50, 30, 11, 9])
    cal, test = calibration_test_split(labels.size, labels, 0.5, seed=1)
    assert np.intersect1d(cal, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([cal, test])), np.arange(labels.size))
    assert cal.size == 100
    per_class = np.bincount(labels[cal], minlength=5)
    assert (np.abs(per_class - np.array([50, 25, 15, 5.5, 4.5])) <= 1).all()
    again = calibration_test_split(labels.size, labels, 0.5, seed=1)
    assert np.array_equal(again[0], cal)
    assert not np.array_equal(calibration_test_split(labels.size, labels, 0.5, seed=2)[0], cal)
    cal2, test2 = calibration_test_split(10, None, 0.3, seed=0)
    assert cal2.size == 3 and test2.size == 7
    for args, match in (((1,), "at least 2"), ((10, None, 0.0), "strictly between"),
                        ((10, None, 1.0), "strictly between"), ((10, np.zeros(9)), "labels must have shape")):
        with pytest.raises(ValueError, match=match):
            calibration_test_split(*args)


# ---- synthetic data --------------------------------------------------------------------------------
def test_synthetic_outputs_are_realistic_and_seeded():
    out = synthetic_exit_outputs(4000, num_classes=10, seed=3)
    again = synthetic_exit_outputs(4000, num_classes=10, seed=3)
    np.testing.assert_array_equal(out.logits, again.logits)
    scores = ExitScores.from_outputs(out)
    acc = anytime_accuracy(scores.correct)
    assert (np.diff(acc) > 0).all()  # later exits more accurate
    np.testing.assert_allclose(acc, [0.62, 0.72, 0.79], atol=0.03)
    for k in range(3):  # confidence correlated with correctness
        assert scores.scores[k][scores.correct[k]].mean() > scores.scores[k][~scores.correct[k]].mean() + 0.1
