"""Exported graphs of the three reference cascades (224x224, 1000 classes) at batch 2.

The same checks as test_parity_export.py with the full-size tolerance (logits 2e-5, reused features and
attention logits 1e-4), on the seeded, perturbed torch model -> `.pth` -> `.ckpt` (tools/convert_weights.py)
-> MindSpore, both exported through tools/export.py: ONNX with a dynamic batch and with a static batch of 3
(2 rows padded to 3, 1 row padded to 3: the pad rows go through full-size graphs; splitting is covered on
the tiny configs), MINDIR with a dynamic batch. MindSpore runs op by op (PYNATIVE) on CPU, several seconds
per full-size forward here, so its `forward_adaptive` comparison takes two exit mixtures (one per exit
pattern that sends rows past exit 1) and the torch side all five.

The exports of one model are made once (module fixture) and deleted after its tests (hundreds of MB).
Measured cost and memory: see the README's Deploy section.
"""
from __future__ import annotations

import shutil

import pytest

from common import REFERENCE_MODELS
from paritylib import TOL_LOGITS_FULL, need
from test_parity_export import Case, check_cross, check_runner, check_stages, mixtures, ms_adaptive, torch_adaptive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=REFERENCE_MODELS)
def case(request, tmp_path_factory):
    need("torch")
    need("mindspore")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: exported-graph parity is skipped")
    tmp = tmp_path_factory.mktemp(f"export_{request.param}")
    c = Case(request.param, tmp, ms_static=False, n_random=1, structured=("ramp",), onnx_sizes=(3,))
    yield c
    for kind in list(c.dirs):
        c.release(kind)
    shutil.rmtree(tmp, ignore_errors=True)


def test_onnx_stages_equal_torch_eager(case):
    failures = check_stages(case, "onnx dynamic", case.eager("torch"), TOL_LOGITS_FULL)
    assert not failures, "\n".join(failures)


def test_mindir_stages_equal_mindspore_eager(case):
    failures = check_stages(case, "mindir dynamic", case.eager("mindspore"), TOL_LOGITS_FULL)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", ["onnx dynamic", "onnx static"])
def test_onnx_runner_equals_torch_forward_adaptive(case, kind):
    logits = [o["logits"] for o in case.eager("torch")]
    failures = check_runner(case, kind, torch_adaptive(case.model), logits, TOL_LOGITS_FULL, exercise=("padding",))
    if kind.endswith("static"):
        case.release(kind)
    assert not failures, "\n".join(failures)


def test_mindir_runner_equals_mindspore_forward_adaptive(case):
    logits = [o["logits"] for o in case.eager("mindspore")]
    failures = check_runner(case, "mindir dynamic", ms_adaptive(case.net), logits, TOL_LOGITS_FULL,
                            sweep=mixtures(case.cfg.num_exits)[2:4])
    assert not failures, "\n".join(failures)


def test_onnx_and_mindir_exports_agree(case):
    failures = check_cross(case, TOL_LOGITS_FULL)
    assert not failures, "\n".join(failures)
