"""Exported graphs, every tiny registered config: ONNX (from PyTorch) and MINDIR (from MindSpore).

Per config (the seeded, perturbed torch model -> `.pth` -> tools/convert_weights.py -> `.ckpt` -> MindSpore;
both exported through tools/export.py from those files):
- every exported stage against the eager model of its own framework (`forward_exits`), fed the
  eager model's reused tensors: logits within 1e-5, the reused features and attention logits it hands on
  within 1e-4 (ONNX dynamic batch vs torch, MINDIR dynamic batch vs MindSpore PYNATIVE);
- the runner (common.deploy) against `forward_adaptive` of its framework for a sweep of exit mixtures:
  identical exit decisions, logits within 1e-5; with a dynamic batch and with fixed batch sizes where the
  rows are padded and split (ONNX sizes 2,3 on every config; MINDIR size 3 on MINDIR_STATIC: MindSpore
  compiles every static graph anew, 1-3 s each here, and the host loop is the same code);
- across frameworks: the ONNX runner and the MINDIR runner give per-exit logits within 1e-5 and identical
  exit decisions over the threshold sweep.

The margins go into the parity report. The full-size reference cascades are in test_parity_export_full.py.
"""
from __future__ import annotations

import contextlib
import gc
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from common import get_config, list_models
from common.adaptive import scores, thresholds_for_fractions
from paritylib import (ROOT, TOL_INTERMEDIATE, TOL_LOGITS, Row, compare_decisions, convert_ok, images, max_diffs,
                       need, record, seed_of, torch_model)

TINY = list_models(tiny=True)
MINDIR_STATIC = ("dvt_tiny_t2t", "dvt_tiny_deit_4exit")
ONNX_SIZES, MINDIR_SIZES = (2, 3), (3,)
N_RANDOM = 5  # plus the 5 structured images: 10 rows, so sizes 2,3 split (3+3+3+1) and pad (1 -> 2)


def export_cli(*args) -> None:
    """tools/export.py's main() in this process (its progress bar and summary swallowed)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import export as export_tool
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = export_tool.main([str(a) for a in args])
    assert status == 0, f"tools/export.py {' '.join(map(str, args))} failed:\n{err.getvalue()[-3000:]}"


def mixtures(k_exits: int) -> list[list[float]]:
    """Exit mixtures from 'all leave at exit 1' to 'all reach the last exit'."""
    if k_exits == 1:
        return [[1.0]]
    first, last = [1.0] + [0.0] * (k_exits - 1), [0.0] * (k_exits - 1) + [1.0]
    even = [1.0 / k_exits] * k_exits
    skewed = [0.5] + [0.5 / (k_exits - 1)] * (k_exits - 1)
    middle = [0.0] + [1.0 / (k_exits - 1)] * (k_exits - 1)
    return [first, last, even, skewed, middle]


class Case:
    """One config: both eager models, their exports, and the images."""

    def __init__(self, name: str, tmp: Path, ms_static: bool, seed_salt: str = "export", n_random: int = N_RANDOM,
                 structured=None, onnx_sizes=ONNX_SIZES, mindir_sizes=MINDIR_SIZES):
        import ms_impl
        import torch_impl
        self.name, self.cfg = name, get_config(name)
        self.model = torch_model(name, seed_of(name, seed_salt))
        pth = torch_impl.save_checkpoint(self.model, tmp / "torch.pth")
        convert_ok(pth, tmp / "model.ckpt")
        self.net = ms_impl.create_model(name, checkpoint_path=tmp / "model.ckpt")
        self.dirs = {"onnx dynamic": tmp / "onnx_dyn", "onnx static": tmp / "onnx_static",
                     "mindir dynamic": tmp / "mindir_dyn"}
        export_cli(pth, "--out", self.dirs["onnx dynamic"], "--format", "onnx", "--dynamic-batch", "--no-verify")
        export_cli(pth, "--out", self.dirs["onnx static"], "--format", "onnx", "--batch-sizes",
                   ",".join(map(str, onnx_sizes)), "--no-verify")
        export_cli(tmp / "model.ckpt", "--out", self.dirs["mindir dynamic"], "--format", "mindir", "--dynamic-batch",
                   "--no-verify")
        if ms_static:
            self.dirs["mindir static"] = tmp / "mindir_static"
            export_cli(tmp / "model.ckpt", "--out", self.dirs["mindir static"], "--format", "mindir",
                       "--batch-sizes", ",".join(map(str, mindir_sizes)), "--no-verify")
        extra = {} if structured is None else {"structured": structured}
        self.x = images(self.cfg, n_random, seed=seed_of(name, "export images"), **extra)
        self._runners, self._eager = {}, {}

    def eager(self, framework: str) -> list[dict]:
        """The eager model's per-exit logits, features and attention logits on `x` (computed once)."""
        if framework not in self._eager:
            self._eager[framework] = (torch_eager(self.model, self.x) if framework == "torch"
                                      else ms_eager(self.net, self.x))
        return self._eager[framework]

    def runner(self, kind: str):
        from common.deploy import load_runner
        if kind not in self._runners:
            self._runners[kind] = load_runner(self.dirs[kind], threads=1)
        return self._runners[kind]

    def release(self, kind: str) -> None:
        """Drop a runner no later test needs (full size: 0.5-0.7 GB of sessions / compiled graphs each)."""
        self._runners.pop(kind, None)
        gc.collect()


@pytest.fixture(scope="module", params=TINY)
def case(request, tmp_path_factory):
    need("torch")
    need("mindspore")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: exported-graph parity is skipped")
    name = request.param
    return Case(name, tmp_path_factory.mktemp(f"export_{name}"), name in MINDIR_STATIC)


# ---- every exported stage against its own framework's eager model ------------------------------------------
def eager_stage_io(outs, k: int, x: np.ndarray, cfg) -> tuple[list, dict]:
    """Exit k's graph inputs from the eager ExitOutputs (numpy), and the eager values of its outputs."""
    from common.deploy.signature import sends_features, sends_relations
    feeds = [x]
    if k > 0 and cfg.uses_feature_reuse(k):
        feeds.append(outs[k - 1]["features"])
    if k > 0 and cfg.uses_relation_reuse(k):
        feeds += list(outs[k - 1]["relations"])
    expected = {"logits": outs[k]["logits"]}
    if sends_features(cfg, k):
        expected["features"] = outs[k]["features"]
    if sends_relations(cfg, k):
        expected.update({f"relations.{i}": r for i, r in enumerate(outs[k]["relations"])})
    return feeds, expected


def torch_eager(model, x: np.ndarray) -> list[dict]:
    import torch
    with torch.no_grad():
        outs = model.forward_exits(torch.from_numpy(x))
    return [{"logits": o.logits.numpy(), "features": o.features.numpy(),
             "relations": [r.numpy() for r in o.relations]} for o in outs]


def ms_eager(net, x: np.ndarray) -> list[dict]:
    import mindspore as ms
    outs = net.forward_exits(ms.Tensor(x))
    return [{"logits": o.logits.asnumpy(), "features": o.features.asnumpy(),
             "relations": [r.asnumpy() for r in o.relations]} for o in outs]


def check_stages(case: Case, kind: str, eager: list[dict], logits_tol: float) -> list[str]:
    runner = case.runner(kind)
    failures = []
    for k in range(case.cfg.num_exits):
        feeds, expected = eager_stage_io(eager, k, case.x, case.cfg)
        names = [s.name for s in runner.manifest.outputs(k)]
        assert names == list(expected), (names, list(expected))
        got = dict(zip(names, runner.run_stage(k, feeds)[0]))
        row = Row(case.name, f"{kind} graph vs eager", str(k))
        for name, want in expected.items():
            abs_d, rel_d = max_diffs(got[name], want)
            column = "logits" if name == "logits" else "features" if name == "features" else "attn_logits"
            prev = row.values.get(column, (0.0, 0.0))
            row.values[column] = (max(prev[0], abs_d), max(prev[1], rel_d))
            tol = logits_tol if name == "logits" else TOL_INTERMEDIATE
            if not abs_d <= tol:
                row.ok = False
                failures.append(f"{case.name} {kind} exit {k} {name}: max |diff| {abs_d:.3e} > {tol:g}")
        record(row)
    return failures


def test_onnx_stages_equal_torch_eager(case):
    failures = check_stages(case, "onnx dynamic", case.eager("torch"), TOL_LOGITS)
    assert not failures, "\n".join(failures)


def test_mindir_stages_equal_mindspore_eager(case):
    failures = check_stages(case, "mindir dynamic", case.eager("mindspore"), TOL_LOGITS)
    assert not failures, "\n".join(failures)


# ---- the runner against forward_adaptive ----------------------------------------------------------------------
def check_runner(case: Case, kind: str, adaptive, eager_logits: list, logits_tol: float, sweep=None,
                 exercise=("padding", "splitting")) -> list[str]:
    """Runner decisions and logits against `adaptive(x, thresholds) -> (logits, exit_index, counts)` for the
    exit mixtures `sweep` (default: all of `mixtures`); a fixed-size export must exercise `exercise`."""
    runner = case.runner(kind)
    sweep = mixtures(case.cfg.num_exits) if sweep is None else sweep
    s = np.stack([scores(lg) for lg in eager_logits])
    rounding = float(np.abs(np.stack([scores(lg) for lg in runner.run_cascade(case.x)]) - s).max())
    failures, worst, pads, calls = [], 0.0, 0, 0
    for fractions in sweep:
        t, counts, margin = thresholds_for_fractions(s, fractions)
        assert margin > 4 * rounding, f"{case.name}: confidences too close for a decided split ({margin:.2g})"
        ref_logits, ref_exits, ref_counts = adaptive(case.x, t)
        res = runner.run(case.x, t)
        pads, calls = pads + sum(res.padded_rows), max(calls, max(res.graph_calls))
        if not (np.array_equal(res.exit_index, ref_exits) and tuple(res.exit_counts) == tuple(ref_counts)):
            failures.append(f"{case.name} {kind} {fractions}: exits {res.exit_counts} vs {ref_counts}")
            continue
        worst = max(worst, max_diffs(res.logits, ref_logits)[0])
    if worst > logits_tol:
        failures.append(f"{case.name} {kind}: runner logits differ from forward_adaptive by {worst:.3e}")
    done = {"padding": pads > 0, "splitting": calls > 1}
    missing = [what for what in exercise if not done[what]]
    if not runner.manifest.dynamic and missing:
        failures.append(f"{case.name} {kind}: {' and '.join(missing)} not exercised ({pads} pad rows, {calls} calls)")
    scale = max(float(np.abs(lg).max()) for lg in eager_logits)
    record(Row(case.name, f"{kind} runner vs forward_adaptive", "runner",
               {"logits": (worst, worst / scale), "argmax": f"exits same for {len(sweep)} mixtures; pad rows {pads}, "
                                                           f"up to {calls} calls per exit"}, ok=not failures))
    return failures


def torch_adaptive(model):
    import torch

    def run(x, t):
        res = model.forward_adaptive(torch.from_numpy(x), t)
        return res.logits.numpy(), res.exit_index.numpy(), res.exit_counts
    return run


def ms_adaptive(net):
    import mindspore as ms

    def run(x, t):
        res = net.forward_adaptive(ms.Tensor(x), t)
        return res.logits.asnumpy(), res.exit_index.asnumpy(), res.exit_counts
    return run


@pytest.mark.parametrize("kind", ["onnx dynamic", "onnx static"])
def test_onnx_runner_equals_torch_forward_adaptive(case, kind):
    logits = [o["logits"] for o in case.eager("torch")]
    failures = check_runner(case, kind, torch_adaptive(case.model), logits, TOL_LOGITS)
    if kind.endswith("static"):
        case.release(kind)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", ["mindir dynamic", "mindir static"])
def test_mindir_runner_equals_mindspore_forward_adaptive(case, kind):
    if kind not in case.dirs:
        pytest.skip(f"static MINDIR graphs only for {', '.join(MINDIR_STATIC)} (compile time; see module doc)")
    logits = [o["logits"] for o in case.eager("mindspore")]
    failures = check_runner(case, kind, ms_adaptive(case.net), logits, TOL_LOGITS)
    if kind.endswith("static"):
        case.release(kind)
    assert not failures, "\n".join(failures)


# ---- across frameworks ------------------------------------------------------------------------------------------
def check_cross(case: Case, logits_tol: float) -> list[str]:
    onnx, mindir = case.runner("onnx dynamic"), case.runner("mindir dynamic")
    a, b = onnx.run_cascade(case.x), mindir.run_cascade(case.x)
    failures = []
    for k, (za, zb) in enumerate(zip(a, b)):
        abs_d, rel_d = max_diffs(zb, za)
        record(Row(case.name, "mindir vs onnx graphs", str(k), {"logits": (abs_d, rel_d)}, ok=abs_d <= logits_tol))
        if not abs_d <= logits_tol:
            failures.append(f"{case.name} exit {k}: MINDIR vs ONNX logits {abs_d:.3e} > {logits_tol:g}")
    failures += compare_decisions(case.name, "mindir vs onnx graphs", a, b, logits_tol)
    s = np.stack([scores(lg) for lg in a])
    for fractions in mixtures(case.cfg.num_exits):
        t = thresholds_for_fractions(s, fractions)[0]
        ra, rb = onnx.run(case.x, t), mindir.run(case.x, t)
        if not np.array_equal(ra.exit_index, rb.exit_index):
            failures.append(f"{case.name} {fractions}: runner exits differ: {ra.exit_counts} vs {rb.exit_counts}")
    return failures


def test_onnx_and_mindir_exports_agree(case):
    failures = check_cross(case, TOL_LOGITS)
    assert not failures, "\n".join(failures)
