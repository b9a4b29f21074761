"""Quiet framework logs for the command-line tools: called first thing, before MindSpore is imported.

MindSpore reads its log level once, from the environment, when `import mindspore` runs (`GLOG_v`:
0 debug, 1 info, 2 warning (its default), 3 error, 4 critical; the C++ runtime and the Python logger
alike). At level 2 a CPU run prints compiler and runtime warnings that a user can do nothing about
(thousands of lines for some GRAPH-mode graphs), so every CLI of the project starts with
`quiet_framework_logs()`, which makes errors-only the default. A user who sets `GLOG_v` (for example
`GLOG_v=2` for warnings, `GLOG_v=1` for info) gets exactly that level: an explicit value is never
overridden. Library code never calls this: importing `ms_impl` from your own script keeps MindSpore's
default.

This module only sets environment variables; it imports no framework.
"""
from __future__ import annotations

import os
import sys

MINDSPORE_LEVEL_VARIABLE = "GLOG_v"
QUIET_LEVEL = "3"  # errors only


def quiet_framework_logs(environ=None) -> bool:
    """Default MindSpore's log to errors only unless the user chose a level; returns True if it set it.

    Must run before the first `import mindspore` of the process (and is inherited by the subprocesses it
    starts); afterwards it only changes what child processes see, so it says so on stderr.
    """
    env = os.environ if environ is None else environ
    if env.get(MINDSPORE_LEVEL_VARIABLE, "").strip():
        return False
    env[MINDSPORE_LEVEL_VARIABLE] = QUIET_LEVEL
    if environ is None and "mindspore" in sys.modules:
        print("note: MindSpore was imported before its log level was set; this process keeps its level",
              file=sys.stderr)
    return True
