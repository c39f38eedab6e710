"""Kill every stage while it writes: no output may look finished, and the next run recovers."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, TINY

from components.common import artifacts
from components.common.config import load_config
from components.common.errors import UserError
from pipeline import DAG
from targets.local import stage_argv

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
CASES = [(s.name, sig) for s in DAG for sig in (signal.SIGKILL, signal.SIGTERM)]


@pytest.mark.parametrize("stage,sig", CASES, ids=[f"{n}-{s.name}" for n, s in CASES])
def test_killed_stage_leaves_nothing_that_looks_finished(tmp_path, tiny_run, stage, sig):
    step = DAG[stage]
    run = tmp_path / "run"
    for upstream in step.upstream():
        shutil.copytree(tiny_run / upstream, run / upstream)
    argv = stage_argv(step, load_config(TINY), str(run))
    output = run / stage / step.spec.outputs[0].name
    proc = subprocess.Popen([sys.executable, *argv[1:]], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if list(output.parent.glob(f".{output.name}.tmp-*")):  # the stage is writing its output
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    proc.wait(timeout=120)
    assert proc.returncode != 0, f"{stage} finished before it could be killed"
    assert not output.exists(), "a killed stage left a final output"
    for leftover in output.parent.glob(f".{output.name}.tmp-*"):
        assert sig == signal.SIGKILL, "SIGTERM must clean up its temporary output"
        with pytest.raises(UserError, match="not a finished artifact"):
            artifacts.verify(leftover)

    again = subprocess.run([sys.executable, *argv[1:]], env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    artifacts.verify(output, step.spec.outputs[0].type)
    assert not list(output.parent.glob(f".{output.name}.tmp-*")), "stale temporary output survived a good run"
