"""MindSpore's log is errors-only by default in every CLI, and a level the user sets is kept
(`common.quiet_logs`)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.quiet_logs import QUIET_LEVEL, quiet_framework_logs

ROOT = Path(__file__).resolve().parents[1]
CLIS = sorted(ROOT.glob("tools/*.py")) + [ROOT / "ms_impl" / "train.py", ROOT / "ms_impl" / "evaluate.py"]

# A Python-side warning (a deprecated argument) and a C++ one (the fallback expander on a dynamic-shape
# matmul in GRAPH mode): both are printed at MindSpore's default level 2.
TRIGGER = """
import sys
sys.path.insert(0, {root!r})
from common.quiet_logs import quiet_framework_logs
quiet_framework_logs()
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
ms.set_context(device_target="CPU")
if {cpp}:
    ms.set_context(mode=ms.GRAPH_MODE)
    class Net(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)
    net = Net()
    net.set_inputs(Tensor(shape=[None, 3, 4], dtype=ms.float32), Tensor(shape=[None, 4, 5], dtype=ms.float32))
    print(net(Tensor(np.ones((2, 3, 4), np.float32)), Tensor(np.ones((2, 4, 5), np.float32))).shape)
print("done")
"""


def test_sets_errors_only_unless_the_user_chose_a_level():
    env = {}
    assert quiet_framework_logs(env) is True and env == {"GLOG_v": QUIET_LEVEL}
    for chosen in ("0", "1", "2", "4"):
        env = {"GLOG_v": chosen}
        assert quiet_framework_logs(env) is False and env == {"GLOG_v": chosen}


def _mindspore_cli(path: Path) -> bool:
    text = path.read_text()
    return "mindspore" in text or "ms_impl" in text


@pytest.mark.parametrize("path", [p for p in CLIS if _mindspore_cli(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_mindspore_cli_quiets_the_log_before_any_framework_import(path):
    """At module level, the `quiet_framework_logs()` call comes before the first statement that imports
    mindspore or ms_impl (anything that imports them lazily runs later still)."""
    tree = ast.parse(path.read_text())
    call_line, import_line = None, None
    for node in tree.body:
        if call_line is None and isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", None) == "quiet_framework_logs":
            call_line = node.lineno
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in ("mindspore", "ms_impl") for n in names) and import_line is None:
                import_line = node.lineno
    assert call_line is not None, f"{path.name} never calls quiet_framework_logs() at module level"
    assert import_line is None or call_line < import_line, (call_line, import_line)


def _run(script_dir: Path, cpp: bool, glog):
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    if glog is not None:
        env["GLOG_v"] = glog
    script = script_dir / f"trigger_{cpp}.py"  # GRAPH mode compiles from source files only
    script.write_text(TRIGGER.format(root=str(ROOT), cpp=cpp))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-3000:]
    return proc.stderr


def test_quiet_by_default_and_the_users_level_wins(tmp_path):
    assert "[WARNING]" not in _run(tmp_path, cpp=True, glog=None)  # Python and C++ warnings both silenced
    loud = _run(tmp_path, cpp=False, glog="2")
    assert "[WARNING]" in loud and "device_target" in loud
