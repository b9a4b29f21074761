"""Each framework alone against stored truth (parity/golden/, written by parity/make_golden.py).

A CUDA box with only torch, or an Ascend box with only MindSpore, still checks its half: the stored
tiny models (canonical safetensors, float16-exact weights) must reproduce the stored per-exit logits
within 1e-5. The file checks need neither framework.
"""
import json

import numpy as np
import pytest

from common import get_config
from common.convert import sha256_file
from common.exits import per_exit
from make_golden import GOLDEN_CONFIGS, SIZE_LIMIT, golden_weights
from paritylib import GOLDEN_DIR, TOL_GOLDEN, Row, max_diffs, need, record

MANIFEST = json.loads((GOLDEN_DIR / "MANIFEST.json").read_text())


def stored(name):
    npz = np.load(GOLDEN_DIR / f"{name}.npz")
    return npz["images"], [npz[f"logits_exit{k}"] for k in range(get_config(name).num_exits)]


def check(name, framework, logits):
    _, want = stored(name)
    failures = []
    for k, (got, ref) in enumerate(zip(logits, want)):
        abs_d, rel_d = max_diffs(got, ref)
        ok = abs_d <= TOL_GOLDEN and np.array_equal(got.argmax(-1), ref.argmax(-1))
        record(Row(name, f"golden: {framework}", str(k), {"logits": (abs_d, rel_d),
                                                           "argmax": "same" if ok else "DIFFERENT"}, ok=ok))
        if not ok:
            failures.append(f"{name} exit {k}: {framework} logits differ from golden by {abs_d:.2e}")
    assert not failures, "\n".join(failures)


def test_golden_files_are_intact_and_small():
    assert sorted(MANIFEST["configs"]) == sorted(GOLDEN_CONFIGS)
    for name, entry in MANIFEST["configs"].items():
        for file, digest in entry["files"].items():
            assert sha256_file(GOLDEN_DIR / file) == digest, f"{file} changed; rerun parity/make_golden.py"
    assert sum(p.stat().st_size for p in GOLDEN_DIR.iterdir()) <= SIZE_LIMIT


@pytest.mark.parametrize("name", GOLDEN_CONFIGS)
def test_torch_alone_matches_golden(name):
    torch = need("torch")
    import torch_impl
    model = torch_impl.create_model(name, checkpoint_path=GOLDEN_DIR / f"{name}.safetensors").eval()
    x, _ = stored(name)
    with torch.no_grad():
        check(name, "torch", [z.numpy() for z in per_exit(model(torch.from_numpy(x)))])


@pytest.mark.parametrize("name", GOLDEN_CONFIGS)
def test_mindspore_alone_matches_golden(name):
    ms = need("mindspore")
    import ms_impl
    net = ms_impl.create_model(name, checkpoint_path=GOLDEN_DIR / f"{name}.safetensors")
    x, _ = stored(name)
    check(name, "mindspore", [z.asnumpy() for z in per_exit(net(ms.Tensor(x)))])


@pytest.mark.parametrize("name", GOLDEN_CONFIGS)
def test_golden_weights_are_reproducible(name):
    """make_golden.py is deterministic: the stored weights are what it builds today (bit-exact)."""
    torch = need("torch")
    if torch.__version__.split("+")[0] != MANIFEST["torch"].split("+")[0]:
        pytest.skip(f"golden weights were drawn with torch {MANIFEST['torch']}; RNG streams of "
                    f"{torch.__version__} may differ (the logits checks above still apply)")
    from safetensors.numpy import load_file
    stored_weights = load_file(str(GOLDEN_DIR / f"{name}.safetensors"))
    fresh = golden_weights(name)
    assert set(stored_weights) == set(fresh)
    assert all(np.array_equal(stored_weights[k], fresh[k]) for k in fresh)
