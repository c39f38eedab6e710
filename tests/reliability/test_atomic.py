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

from core import artifacts
from core.config import load_config
from core.errors import UserError
from engines.local import stage_argv
from pipeline import DAG

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


# --- Kills at the dangerous instants of the commit (core/faults.py) ----------------
# data_prep stands in for every stage here: the commit code is the harness's, shared by all five,
# and data_prep is quick and deterministic, so "bit-identical after a re-run" is a file compare.


def data_prep_argv(run, *sets: str) -> list[str]:
    return [sys.executable, *stage_argv(DAG["data_prep"], load_config(TINY, list(sets)), str(run))[1:]]


def files_of(folder) -> dict[str, str]:
    from core.hashing import tree_files

    return tree_files(folder)


@pytest.fixture(scope="module")
def reference_dataset(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref")
    proc = subprocess.run(data_prep_argv(run), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return files_of(run / "data_prep" / "dataset")


COMMIT_KILLS = [
    ("artifacts.commit", False),  # before anything is sealed
    ("artifacts.commit.sealed", False),  # sealed, not renamed: a finished-looking folder, still hidden
    ("artifacts.commit.sealed", True),  # ...while an older output is in place
    ("artifacts.commit.swap", True),  # between the two renames of a replace: no output at all
]


@pytest.mark.parametrize(
    "point,replacing", COMMIT_KILLS, ids=[f"{p}{'-replacing' if r else ''}" for p, r in COMMIT_KILLS]
)
def test_kill_inside_the_output_commit_then_rerun_is_bit_identical(tmp_path, reference_dataset, point, replacing):
    run = tmp_path / "run"
    output = run / "data_prep" / "dataset"
    older = None
    if replacing:  # an older, different artifact (another split seed) where the new one will go
        proc = subprocess.run(data_prep_argv(run, "data.seed=7"), env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        older = files_of(output)
        assert older != reference_dataset
    killed = subprocess.run(
        data_prep_argv(run), env={**ENV, "SLM_FAULT": point}, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    # Whatever a kill leaves: the final path holds either nothing or the older artifact, whole;
    # never a mix, never the new files unsealed. Hidden leftovers are never read.
    if replacing and point != "artifacts.commit.swap":
        assert artifacts.verify(output)["params"]["data.seed"] == 7 and files_of(output) == older
    else:
        assert not output.exists(), "a kill inside the commit left an output in place"
        with pytest.raises(UserError, match="input artifact not found"):
            artifacts.verify(output)
    hidden = [p.name for p in output.parent.iterdir() if p.name.startswith(".")]
    assert hidden, "the kill left no trace at all: the fault point was not reached"

    again = subprocess.run(data_prep_argv(run), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert files_of(output) == reference_dataset, "the re-run is not bit-identical to an uninterrupted run"
    artifacts.verify(output, "Dataset")
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")], "hidden leftovers survived a good run"
