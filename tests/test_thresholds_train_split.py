"""--calibrate-on train: thresholds solved on the training split without augmentation (the paper's choice)."""
import json

import numpy as np

from common.thresholds import ThresholdCurve, load_exit_outputs
from common.training import load_summary
from common.training.args import parse_train_args


def test_evaluate_calibrates_on_the_training_split(short_torch_run, tmp_path):
    from torch_impl import evaluate

    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(short_torch_run / "checkpoint.pth"), "--output", str(out),
                          "--workers", "0", "--solvers", "anchored", "--calibrate-on", "train"]) == 0
    train = load_exit_outputs(out / "train_outputs.npz")
    calib = load_exit_outputs(out / "calib_outputs.npz")
    assert (train.num_samples, calib.num_samples, train.split) == (1078, 360, "train")
    result = json.loads((out / "thresholds.json").read_text())
    assert result["calibration"] == {"file": "train_outputs.npz", "split": "train", "num_samples": 1078}
    assert result["default_solver"] == "anchored"
    summary = load_summary(out / "summary.json")
    assert summary["thresholds"]["solved_on"] == "train" and summary["files"]["train_outputs"] == "train_outputs.npz"
    # the curve's calibration numbers are the training split's, its test numbers the test split's
    curve = ThresholdCurve.load(out)
    assert curve.info["num_calibration"] == 1078
    np.testing.assert_allclose(summary["curve"]["solvers"]["anchored"]["accuracy"],
                               result["solvers"]["anchored"]["test"]["accuracy"])
    assert parse_train_args(["--calibrate-on", "train"]).calibrate_on == "train"
    assert parse_train_args([]).calibrate_on == "calib"
