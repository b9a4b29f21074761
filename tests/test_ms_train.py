"""ms_impl/train.py on tiny runs, in-process: resume equivalence, NaN stop, transfer, data sets, clear errors,
and the pieces that replace timm (fused AdamW, schedule, mixup, loss scaling) checked on numbers."""
import math
import pickle

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from common.training import load_summary
from common.training.schedule import lr_at
from ms_impl import create_model, save_checkpoint
from ms_impl import engine
from ms_impl import train
from ms_impl.checkpoint import CheckpointMismatchError, read_checkpoint
from ms_impl.mixup import Mixup, rand_bbox, smooth_targets
from ms_impl.optim import AdamW, adamw_scalars, decay_flags
from ms_impl.train_state import load_train_state
from ms_impl.transfer import load_for_transfer

# --cpu-threads 0: in-process runs leave MindSpore's kernel pool alone (it can be sized once per process, and
# later test modules share this one).
FAST = ["--model", "dvt_tiny_deit", "--batch-size", "16", "--max-steps-per-epoch", "2", "--solvers", "geometric",
        "--workers", "0", "--eval-batch-size", "256", "--warmup-epochs", "1", "--device", "CPU", "--cpu-threads", "0"]
# Every host-side source of randomness of the reference recipe: RandAugment, random erasing, flips, mixup/cutmix,
# plus EMA and clipping. dvt_tiny_deit has no dropout; drop path stays 0 (see ms_impl/train_state.py: MindSpore's
# dropout kernels keep a random state that a resumed process cannot restore).
RECIPE = ["--model-ema", "--model-ema-decay", "0.9", "--mixup", "0.2", "--cutmix", "0.3", "--aa",
          "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--hflip", "0.5", "--clip-grad", "1.0"]


@pytest.fixture(autouse=True)
def _keep_execution_mode():
    """train.main switches the process to GRAPH (or PYNATIVE) mode; other test modules expect theirs back."""
    mode = ms.get_context("mode")
    yield
    ms.set_context(mode=mode)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a)


def _weights(path) -> dict:
    return {k: v.asnumpy() for k, v in read_checkpoint(path).items() if hasattr(v, "asnumpy")}


def _log_rows(path):
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    keep = [i for i, name in enumerate(head) if name not in ("img_per_s", "epoch_seconds")]
    return [[line.split(",")[i] for i in keep] for line in lines]


def test_resume_after_a_mid_epoch_kill_is_identical(tmp_path, monkeypatch):
    # PYNATIVE: the resume logic is host-side and the same in both modes; three GRAPH runs in one process
    # compile the train step three times (139 s here against 23 s). GRAPH-mode resume is checked bit for bit
    # by test_ms_train_processes.py's SIGKILL test.
    args = FAST + RECIPE + ["--epochs", "3", "--mode", "pynative"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert train.main(args + ["--output", str(straight)]) == 0

    calls = {"n": 0}
    real = engine.prepare_batch

    def killed_in_epoch_3(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 3, step 2: one update of epoch 3 already applied in memory
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **kw)

    monkeypatch.setattr(engine, "prepare_batch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.main(args + ["--output", str(part)])
    monkeypatch.undo()
    assert load_train_state(part / "last_state.ckpt")["meta"]["epoch"] == 2
    assert read_checkpoint(part / "checkpoint.ckpt")["epoch"] == "2"
    assert not (part / "summary.json").exists()

    assert train.main(args + ["--output", str(part), "--resume", "auto"]) == 0
    a, b = load_train_state(straight / "last_state.ckpt"), load_train_state(part / "last_state.ckpt")
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == 3 and a["meta"]["num_updates"] == b["meta"]["num_updates"] == 6
    diffs = {part_: _max_diff(a[part_], b[part_]) for part_ in ("model", "optimizer", "ema")}
    print(f"resume vs straight, max |diff|: {diffs}")
    assert max(diffs.values()) <= 1e-6, diffs
    assert _max_diff(_weights(straight / "checkpoint.ckpt"), _weights(part / "checkpoint.ckpt")) <= 1e-6
    sa, sb = load_summary(straight / "summary.json"), load_summary(part / "summary.json")
    assert sa["top1"] == sb["top1"] and sa["curve"] == sb["curve"] and sb["weights"]["ema"]
    assert _log_rows(straight / "log.csv") == _log_rows(part / "log.csv")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = engine.prepare_batch

    def nan_in_epoch_2(*a, **kw):
        calls["n"] += 1
        images, targets = real(*a, **kw)
        return (images * np.float32("nan") if calls["n"] == 4 else images), targets

    monkeypatch.setattr(engine, "prepare_batch", nan_in_epoch_2)
    out = tmp_path / "run"
    assert train.main(FAST + ["--epochs", "3", "--output", str(out)]) == 3
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 2/2" in err and "last good checkpoint is kept" in err
    state = load_train_state(out / "last_state.ckpt")
    assert state["meta"]["epoch"] == 1 and read_checkpoint(out / "checkpoint.ckpt")["epoch"] == "1"
    saved = _weights(out / "checkpoint.ckpt")
    assert _max_diff({k: state["model"][k] for k in saved}, saved) == 0.0
    assert not (out / "summary.json").exists()
    assert create_model("dvt_tiny_deit", checkpoint_path=out / "checkpoint.ckpt").num_exits == 3


def test_transfer_reinitialises_only_the_heads(tmp_path):
    source = create_model("dvt_tiny_deit")
    path = save_checkpoint(source, tmp_path / "ten.ckpt")
    target = create_model("dvt_tiny_deit", num_classes=2)
    heads = load_for_transfer(target, path)
    assert heads == ["exits.0.head", "exits.1.head", "exits.2.head"]
    src, dst = dict(source.parameters_and_names()), dict(target.parameters_and_names())
    assert all(np.array_equal(src[k].asnumpy(), dst[k].asnumpy()) for k in dst if ".head." not in k)
    with pytest.raises(CheckpointMismatchError, match="only the classifier heads may differ"):
        load_for_transfer(create_model("dvt_tiny_t2t", num_classes=2), path)


def _image_folder(root, classes=("a", "b"), per_class=12, corrupt=0):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(40, 36, 3), dtype=np.uint8) + 150 * c
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    for i in range(corrupt):  # truncated files everywhere in class a (headers read): the first batch meets one
        path = root / "train" / classes[0] / f"{i}.png"
        path.write_bytes(path.read_bytes()[:300])
    return root


def test_imagefolder_with_transfer_from_a_ten_class_checkpoint(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    init = save_checkpoint(create_model("dvt_tiny_deit"), tmp_path / "init.ckpt")
    out = tmp_path / "run"
    code = train.main(FAST + ["--dataset", "imagefolder", "--data-dir", str(data), "--calib-size", "6",
                              "--batch-size", "4", "--epochs", "1", "--initial-checkpoint", str(init),
                              "--mode", "pynative", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "re-initialised heads: exits.0.head, exits.1.head, exits.2.head" in capsys.readouterr().out
    s = load_summary(out / "summary.json")
    assert s["num_classes"] == 2 and s["dataset"]["sizes"] == {"train": 18, "calib": 6, "test": 8}
    assert s["framework"] == "mindspore" and (out / "checkpoint.ckpt").is_file()


def test_truncated_image_names_the_file(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", corrupt=12)
    code = train.main(FAST + ["--dataset", "imagefolder", "--data-dir", str(data), "--calib-size", "6",
                              "--batch-size", "4", "--epochs", "1", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "cannot read image" in err and str(data / "train" / "a") in err and "Traceback" not in err


def _fake_cifar10(root, n_train=40, n_test=20):
    rng = np.random.default_rng(1)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train // 5
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, size=n))}, fh)
    return root


def test_cifar_pickle_folder_in_pynative_mode(tmp_path):
    _fake_cifar10(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "run"
    assert train.main(FAST + ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--calib-size", "10",
                              "--batch-size", "8", "--epochs", "1", "--mode", "pynative", "--output", str(out)]) == 0
    s = load_summary(out / "summary.json")
    assert s["dataset"]["sizes"] == {"train": 30, "calib": 10, "test": 20}
    assert len(s["top1"]["test"]) == 3 and all(0.0 <= a <= 1.0 for a in s["top1"]["test"])


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cifar10", "--data-dir", "{tmp}/nowhere"], "no CIFAR-10 python folder at"),
    (["--dataset", "imagefolder", "--data-dir", "{tmp}"], "needs train/ and val/ sub-folders"),
    (["--resume", "{tmp}/missing.ckpt"], "no such file"),
    (["--initial-checkpoint", "{tmp}/missing.ckpt"], "no checkpoint at"),
    (["--amp"], "mixed precision needs --device Ascend or GPU"),
    (["--opt", "sgd"], "--opt 'sgd' is not supported"),
    (["--device", "Ascend"], "no Ascend device is available"),
])
def test_bad_arguments_fail_with_a_clear_message(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert train.main(FAST + ["--epochs", "1", "--output", str(tmp_path / "run")] + argv) == 2
    assert message in capsys.readouterr().err


def test_resume_from_a_weights_file_is_refused(tmp_path, capsys):
    weights = save_checkpoint(create_model("dvt_tiny_deit"), tmp_path / "w.ckpt")
    assert train.main(FAST + ["--epochs", "1", "--resume", str(weights), "--output", str(tmp_path / "r")]) == 2
    assert "not a training state" in capsys.readouterr().err


# ---- the pieces that stand in for timm / torch ------------------------------------------------------------
def test_schedule_is_timms_cosine_with_warmup():
    """Hand-computed values of timm's CosineLRScheduler (t_in_epochs, warmup_prefix=False) for the digits recipe."""
    kw = dict(lr=2e-3, epochs=30, warmup_epochs=2, warmup_lr=1e-5, min_lr=1e-5)
    assert lr_at(0, **kw) == pytest.approx(1e-5)
    assert lr_at(1, **kw) == pytest.approx(1e-5 + (2e-3 - 1e-5) / 2)
    assert lr_at(2, **kw) == pytest.approx(1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + math.cos(math.pi * 2 / 30)))
    assert lr_at(15, **kw) == pytest.approx(1e-5 + 0.5 * (2e-3 - 1e-5))
    assert lr_at(29, **kw) == pytest.approx(1.54507e-05, rel=1e-5)  # torch_impl's log.csv (6 digits), epoch 30
    assert lr_at(30, **kw) == lr_at(31, **kw) == 1e-5  # cool-down epochs


def test_fused_adamw_is_the_torch_update():
    """Three steps with decay and no-decay groups against mindspore.experimental.optim.AdamW (= torch AdamW)."""
    from mindspore.experimental.optim import AdamW as ReferenceAdamW
    rng = np.random.default_rng(0)
    shapes = [(64, 48), (48,), (3, 3, 4, 4), (10,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    fused = [ms.Parameter(ms.Tensor(v.copy()), name=f"a{i}") for i, v in enumerate(init)]
    ref = [ms.Parameter(ms.Tensor(v.copy()), name=f"b{i}") for i, v in enumerate(init)]
    opt = AdamW(fused, (True, False, True, False))
    ref_opt = ReferenceAdamW([{"params": [ref[0], ref[2]], "weight_decay": 0.05},
                              {"params": [ref[1], ref[3]], "weight_decay": 0.0}], lr=2e-3, eps=1e-8)
    for t in range(1, 4):
        grads = [(rng.standard_normal(s) * 10.0 ** rng.uniform(-9, 0, s)).astype(np.float32) for s in shapes]
        scalars = [ms.Tensor(np.array([v], np.float32)) for v in adamw_scalars(2e-3, t, (0.9, 0.999), 1e-8, 0.05)]
        opt(ms.mutable(tuple(ms.Tensor(g) for g in grads)), *scalars)
        ref_opt(ms.mutable(tuple(ms.Tensor(grads[i]) for i in (0, 2, 1, 3))))
    worst = max(float(np.abs(a.asnumpy() - b.asnumpy()).max()) for a, b in zip(fused, ref))
    moved = min(float(np.abs(a.asnumpy() - v).max()) for a, v in zip(fused, init))
    assert worst <= 2e-6 and moved > 1e-3, (worst, moved)  # float32 rounding of values ~1-4


def test_weight_decay_groups_are_timms():
    model = create_model("dvt_tiny_t2t")
    params = model.trainable_params()
    flags = dict(zip((p.name for p in params), decay_flags(model, params)))
    assert not flags["exits.0.cls_token"] and not flags["exits.0.blocks.0.norm1.gamma"]
    assert not flags["exits.0.head.bias"] and flags["exits.0.head.weight"]
    assert all(flags[p.name] == (p.ndim > 1 and not p.name.endswith((".cls_token", ".pos_embed"))) for p in params)


def test_mixup_and_cutmix_follow_timm():
    labels = np.array([0, 1, 2, 3])
    t = smooth_targets(labels, 10, 0.1)
    assert t[0, 0] == pytest.approx(0.91) and t[0, 1] == pytest.approx(0.01) and np.allclose(t.sum(1), 1)
    images = np.arange(4 * 1 * 8 * 8, dtype=np.float32).reshape(4, 1, 8, 8)
    mix = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1, num_classes=10)
    rng = np.random.default_rng(3)
    lam, _ = mix.params(np.random.default_rng(3))
    x, y = mix(images, labels, rng)
    assert np.allclose(x, lam * images + (1 - lam) * images[::-1], atol=1e-4)  # image i pairs with B-1-i
    assert y[0, 0] == pytest.approx(lam * 0.91 + (1 - lam) * 0.01, rel=1e-5)
    assert y[0, 3] == pytest.approx(lam * 0.01 + (1 - lam) * 0.91, rel=1e-5)
    cut = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=10)
    x, y = cut(images, labels, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    lam, use_cutmix = cut.params(rng)
    yl, yh, xl, xh = rand_bbox(rng, images.shape, lam)
    area = (yh - yl) * (xh - xl)
    assert use_cutmix and area > 0
    assert np.array_equal(x[0, :, yl:yh, xl:xh], images[3, :, yl:yh, xl:xh])
    assert y[0, 0] == pytest.approx(1 - area / 64.0)  # lambda corrected to the clipped box


def test_loss_scaling_skips_an_overflowing_step():
    """The AMP path of TrainStep (fp32 here, CPU): a non-finite gradient leaves weights and moments untouched and
    halves the loss scale; a finite one applies the update."""
    model = create_model("dvt_tiny_deit", depth=1)
    model.set_train(True)
    params = model.trainable_params()
    opt = AdamW(params, decay_flags(model, params))
    scaler = ms.amp.DynamicLossScaler(scale_value=2.0 ** 10, scale_factor=2, scale_window=2000)
    step = engine.TrainStep(model, opt, loss_scaler=scaler)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = smooth_targets(np.array([0, 1, 2, 3]), 10, 0.1)
    scalars = [ms.Tensor(np.array([v], np.float32)) for v in adamw_scalars(1e-3, 1, (0.9, 0.999), 1e-8, 0.05)]
    before = [p.asnumpy().copy() for p in params]
    x_bad = x.copy()
    x_bad[0, 0, 0, 0] = np.inf
    loss, applied = step(ms.Tensor(x_bad), ms.Tensor(y), *scalars, ms.Tensor(np.array([1.0], np.float32)))
    assert not bool(applied.asnumpy()) and float(scaler.scale_value.asnumpy()) == 2.0 ** 9
    assert all(np.array_equal(p.asnumpy(), b) for p, b in zip(params, before))
    assert all(not m.asnumpy().any() for m in opt.state_parameters())
    loss, applied = step(ms.Tensor(x), ms.Tensor(y), *scalars, ms.Tensor(np.array([1.0], np.float32)))
    assert bool(applied.asnumpy()) and math.isfinite(float(loss.asnumpy()))
    assert any(not np.array_equal(p.asnumpy(), b) for p, b in zip(params, before))
