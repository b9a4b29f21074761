"""The pictures of a run: Fig. 9 easy/hard grid, readable budget ticks, backbones on the accuracy plot."""
import numpy as np
import pytest
from PIL import Image

from common import get_config
from common.thresholds import synthetic_exit_outputs
from common.thresholds.plots import compute_unit, plot_accuracy_vs_gflops, tick_labels
from common.training import SplitData, SplitImages, finalize_run, load_baselines, load_summary
from common.training.gallery import EASY_HARD_FILE, easy_and_hard

PNG = b"\x89PNG\r\n\x1a\n"


def test_budget_ticks_are_readable_on_tiny_models():
    """The digits model's budgets (0.0025-0.0121 GFLOPs) used to read 0.00 / 0.01 on every tick."""
    budgets = np.linspace(0.0025, 0.0121, 60)
    scale, unit = compute_unit(budgets)
    assert (scale, unit) == (1e3, "MFLOPs") and compute_unit([0.47, 3.5]) == (1.0, "GFLOPs")
    shown = scale * budgets[::5]
    labels = tick_labels(shown)
    assert len(set(labels)) == len(labels) and labels[0] == "2.5"
    assert tick_labels([1.0, 1.001, 1.002]) == ["1", "1.001", "1.002"]


def test_easy_and_hard_selection():
    # 3 exits, 5 images, 2 classes; labels all 0
    logits = np.zeros((3, 5, 2), np.float32)
    logits[0, :, 0] = [3.0, 1.0, -1.0, -2.0, 2.0]  # exit 1 right on images 0, 1, 4 (most confident: 0, 4, 1)
    logits[1, :, 0] = [1.0, 1.0, -1.0, -1.0, 1.0]  # exit 2 wrong on 2 and 3
    logits[2, :, 0] = [1.0, 1.0, 2.0, -1.0, 1.0]  # the last exit rescues 2 only
    split = SplitData(np.zeros(5, np.int64), np.zeros((5, 4, 4, 1), np.uint8))
    easy, hard = easy_and_hard(logits, split.labels, SplitImages(split, ["cat", "dog"]), per_group=8)
    assert [e.index for e in easy] == [0, 4, 1] and [h.index for h in hard] == [2]
    assert easy[0].caption.startswith("cat\nexit 1: 0.95")
    assert "exit 1 said dog" in hard[0].caption and "exit 3: 0.88" in hard[0].caption


def test_split_images_from_files(tmp_path):
    paths = []
    for i, mode in enumerate(("L", "RGB")):
        p = tmp_path / f"{i}.png"
        Image.new(mode, (6, 5), 200).save(p)
        paths.append(str(p))
    images = SplitImages(SplitData(np.array([0, 1]), paths=paths))
    assert [images[i].shape for i in range(2)] == [(5, 6, 3), (5, 6, 3)] and images[0].dtype == np.uint8
    assert images.class_name(1) == "1"
    with pytest.raises(ValueError, match="images or file paths"):
        SplitImages(SplitData(np.array([0])))


def test_finalize_draws_fig9_and_the_backbones(tmp_path):
    cfg = get_config("dvt_tiny_t2t")
    calib = synthetic_exit_outputs(200, num_classes=10, num_exits=3, seed=1)
    test = synthetic_exit_outputs(120, num_classes=10, num_exits=3, seed=2)
    images = SplitImages(SplitData(test.labels, np.random.default_rng(0).integers(0, 255, (120, 8, 8, 3), np.uint8)))
    dataset = {"name": "digits", "sizes": {"test": 120}}
    s = finalize_run(tmp_path / "run", cfg, calib=(calib.logits, calib.labels), test=(test.logits, test.labels),
                     framework="torch", mode="train", dataset=dataset, weights={}, solvers="geometric",
                     verbose=False, test_images=images, baselines={"t2t_vit_tiny": (0.004, 0.6)})
    assert EASY_HARD_FILE in s["files"]["plots"]
    for png in s["files"]["plots"]:
        assert (tmp_path / "run" / png).read_bytes()[:8] == PNG
    # baselines come from finished runs on the same test split; other data is left out, with a message
    assert load_baselines([tmp_path / "run"], dataset) == {"dvt_tiny_t2t": (pytest.approx(s["gflops"][-1]),
                                                                             pytest.approx(s["top1"]["test"][-1]))}
    assert load_baselines([tmp_path / "run"], {"name": "cifar10", "sizes": {"test": 10000}}) == {}


def test_accuracy_plot_with_many_backbones(tmp_path):
    plot_accuracy_vs_gflops(tmp_path / "a.png", {"exact": ([0.5, 1.5, 3.4], [0.7, 0.78, 0.8])},
                            ([0.47, 1.46, 3.5], [0.7, 0.77, 0.8]), "t", grids=[7, 10, 14],
                            baselines={"t2t_vit_12": (1.77, 0.765), "t2t_vit_14": (4.8, 0.815)})
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG


def test_a_trained_run_has_its_pictures(short_torch_run):
    summary = load_summary(short_torch_run / "summary.json")
    assert EASY_HARD_FILE in summary["files"]["plots"]
    for png in summary["files"]["plots"]:
        assert (short_torch_run / png).read_bytes()[:8] == PNG
