"""Fault injection for the reliability tests: inert unless ``SLM_FAULT`` names a point.

    SLM_FAULT=train.after_checkpoint         SIGKILL this process when it reaches that point
    SLM_FAULT_ONCE=/some/file                 ...only if that file does not exist yet (it is
                                              created first), so a retried task runs clean

    SLM_FAULT_RANK=1                          ...only in the data-parallel rank of that RANK, and
                                              its parent too: the torchrun agent of its node (a
                                              lost machine)

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
    rank = os.environ.get("SLM_FAULT_RANK")
    if rank is not None and os.environ.get("RANK") != rank:
        return
    once = os.environ.get("SLM_FAULT_ONCE")
    if once:
        try:
            Path(once).touch(exist_ok=False)
        except FileExistsError:
            return
    if rank is not None:  # torchrun's agent first, so that it cannot report the rank's death
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
    # PID 1 of a container ignores signals it has no handler for, SIGKILL from inside included:
    # leave just as abruptly (no finally blocks, no atexit), with the exit code a kill gives.
    os._exit(128 + signal.SIGKILL)
