"""The official MindSpore port's own outputs, reproduced by our models in each framework (parity/golden/msref/).

`parity/make_msref_golden.py` ran the port's network code (its config templates, its cells, its training
path) on seeded weights and stored the weights in the port's layout (a weights-only `.ckpt` and a training
`.ckpt` written by its code, float16 `.safetensors` for the other variants), the inputs and its per-exit
logits. Here each framework loads those files through its ordinary `create_model(..., checkpoint_path=)`
(strict; the port's names and layout converted by `common.naming`) and must give the port's logits within
1e-5, the same argmax and the same exit decisions over a threshold sweep. The committed files are the
port's architecture at reduced width and depth (MANIFEST.json); `DVT_MSREF_DIR=DIR pytest
parity/test_parity_msref.py` runs the same checks on a `--full-size` output.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from common.convert import sha256_file
from common.naming import expected_shapes
from make_msref_golden import OUT, SIZE_LIMIT, VARIANTS
from paritylib import Row, compare_decisions, max_diffs, need, record

TOL = 1e-5  # the margin for the port's logits, both sizes
FIXTURES = Path(os.environ.get("DVT_MSREF_DIR") or OUT)
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
OVERRIDES = {} if MANIFEST["size"] == "full" else MANIFEST["size"]["our_overrides"]
SIZE = "full size" if MANIFEST["size"] == "full" else "reduced"
CASES = [(name, "weights") for name in VARIANTS] + [("dvt_deit_small_msref", "training")]


def _inputs():
    return np.load(FIXTURES / "inputs.npz")["images"].astype(np.float32)


def _port_logits(name, kind):
    stored = np.load(FIXTURES / "logits.npz")
    key = name + ("_train" if kind == "training" else "")
    return [stored[f"{key}/exit{k}"] for k in range(2)]


def _path(name, kind):
    return FIXTURES / MANIFEST["variants"][name]["files"][kind]


def _check(name, kind, framework, logits):
    want = _port_logits(name, kind)
    check = f"port {kind} file: {framework} ({SIZE})"
    failures = []
    for k, (got, ref) in enumerate(zip(logits, want)):
        abs_d, rel_d = max_diffs(got, ref)
        same = np.array_equal(got.argmax(-1), ref.argmax(-1))
        ok = abs_d <= TOL and same
        record(Row(name, check, str(k), {"logits": (abs_d, rel_d), "argmax": "same" if same else "DIFFERENT"}, ok=ok))
        if not ok:
            failures.append(f"{name} ({kind}) exit {k}: {framework} differs from the port by {abs_d:.2e}")
    failures += compare_decisions(name, check, want, logits, TOL)
    assert not failures, "\n".join(failures)


def test_fixtures_are_intact_and_small():
    for file, digest in MANIFEST["sha256"].items():
        assert sha256_file(FIXTURES / file) == digest, f"{file} changed; rerun parity/make_msref_golden.py"
    if FIXTURES == OUT:
        assert sum((OUT / f).stat().st_size for f in MANIFEST["sha256"]) <= SIZE_LIMIT
        assert sorted(MANIFEST["variants"]) == sorted(VARIANTS)


def test_parameter_counts_are_the_ports():
    """Our config holds exactly the elements the port's network has (the MANIFEST counts its cells' tensors)."""
    from common import count_parameters, get_config
    for name, entry in MANIFEST["variants"].items():
        assert count_parameters(get_config(name, **OVERRIDES)) == entry["parameters"], name


@pytest.mark.parametrize("name,kind", CASES)
def test_torch_reproduces_the_port(name, kind):
    torch = need("torch")
    import torch_impl
    model = torch_impl.create_model(name, checkpoint_path=_path(name, kind), **OVERRIDES).eval()
    with torch.no_grad():
        logits = [z.numpy() for z in model(torch.from_numpy(_inputs()))]
    _check(name, kind, "torch", logits)


@pytest.mark.parametrize("name,kind", CASES)
def test_mindspore_reproduces_the_port(name, kind):
    ms = need("mindspore")
    import ms_impl
    net = ms_impl.create_model(name, checkpoint_path=_path(name, kind), **OVERRIDES)
    _check(name, kind, "mindspore", [z.asnumpy() for z in net(ms.Tensor(_inputs()))])


def test_training_checkpoint_drops_and_counts_the_optimizer_state():
    """adam_m.* / adam_v.* (one per parameter), global_step, beta1_power, beta2_power, learning_rate."""
    need("mindspore")
    from common import get_config
    from ms_impl.checkpoint import load_checkpoint
    from ms_impl.models import DVT
    from ms_impl.models.factory import skip_init
    name = "dvt_deit_small_msref"
    with skip_init():
        net = DVT(get_config(name, **OVERRIDES))
    info = load_checkpoint(net, _path(name, "training"))
    port_tensors = len(expected_shapes(net.config, "msref"))  # its to_q/to_k/to_v are three of our qkv
    assert info.naming == "msref"
    assert info.dropped == {"optimizer/training state": 2 * port_tensors + 4}
