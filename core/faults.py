"""Fault injection for the reliability tests: inert unless ``SLM_FAULT`` names a point.

    SLM_FAULT=train.after_checkpoint         SIGKILL this process when it reaches that point
    SLM_FAULT_ONCE=/some/file                 ...only if that file does not exist yet (it is
                                              created first), so a retried task runs clean

SIGKILL gives the stage no chance to clean up: what is left behind is exactly what a node
failure or the OOM killer would leave.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def point(name: str) -> None:
    if os.environ.get("SLM_FAULT") != name:
        return
    once = os.environ.get("SLM_FAULT_ONCE")
    if once:
        try:
            Path(once).touch(exist_ok=False)
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
    # PID 1 of a container ignores signals it has no handler for, SIGKILL from inside included:
    # leave just as abruptly (no finally blocks, no atexit), with the exit code a kill gives.
    os._exit(128 + signal.SIGKILL)
