"""Kill training at random steps (SIGTERM and SIGKILL); the re-run resumes and the final
adapter is bit-identical to an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, TINY

from core.config import load_config
from core.hashing import file_hash
from engines.local import stage_argv
from pipeline import DAG

STEPS, EVERY = 20, 3
SETTINGS = [f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}", "train.log_every=1"]
# Seeded "random" kill steps, alternating the two signals a node can send.
KILL_STEPS = sorted(random.Random(7).sample(range(EVERY + 1, STEPS - 1), 6))
KILLS = [(step, (signal.SIGTERM, signal.SIGKILL)[i % 2]) for i, step in enumerate(KILL_STEPS)]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def train_argv(run_dir) -> list[str]:
    argv = stage_argv(DAG["train"], load_config(TINY, SETTINGS), str(run_dir))
    return [sys.executable, *argv[1:]]


@pytest.fixture(scope="module")
def clean_adapter(tmp_path_factory, tiny_run):
    """An uninterrupted training on the shared dataset: the reference bytes."""
    run = tmp_path_factory.mktemp("clean")
    shutil.copytree(tiny_run / "data_prep", run / "data_prep")
    proc = subprocess.run(train_argv(run), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return file_hash(run / "train" / "adapter" / "adapter_model.safetensors")


def kill_at(run_dir, step: int, sig: signal.Signals) -> str:
    """Start training, wait for the log line of ``step``, send ``sig``; return stderr."""
    proc = subprocess.Popen(train_argv(run_dir), env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if f"step {step}/{STEPS} " in line:
            proc.send_signal(sig)
            break
    lines += proc.stderr.readlines()
    proc.wait(timeout=300)
    assert proc.returncode != 0, "training finished before the kill"
    return "".join(lines)


@pytest.mark.parametrize("step,sig", KILLS, ids=[f"{s.name}@{n}" for n, s in KILLS])
def test_kill_then_resume_is_bit_identical(tmp_path, tiny_run, clean_adapter, step, sig):
    import json

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "data_prep", run / "data_prep")
    log = kill_at(run, step, sig)
    adapter = run / "train" / "adapter"
    assert not adapter.exists(), "a killed stage left an output"
    meta = json.loads((run / "train" / "adapter.checkpoints" / "latest" / "meta.json").read_text())
    if sig == signal.SIGTERM:
        # Preemption notice: a checkpoint at the step it stopped at, not the last periodic one.
        assert f"checkpoint saved at step {meta['step']}" in log
        assert meta["step"] >= step
    else:  # no warning: the last periodic checkpoint (the one due at `step` may not have landed)
        assert meta["step"] % EVERY == 0 and step - EVERY <= meta["step"] <= step + 1

    proc = subprocess.run(train_argv(run), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed from the checkpoint at step {meta['step']}" in proc.stderr
    assert file_hash(adapter / "adapter_model.safetensors") == clean_adapter
    assert not (run / "train" / "adapter.checkpoints").exists()


# Kills at the instants a random step never hits (core/faults.py points).
DANGEROUS = [
    ("train.before_first_checkpoint", None),  # step 1 done, no checkpoint yet: starts over
    ("train.checkpoint_swap", 2 * EVERY),  # between the renames of the 2nd checkpoint: no "latest"
    ("artifacts.commit.sealed", STEPS // EVERY * EVERY),  # adapter sealed, not renamed; checkpoints kept
]


@pytest.mark.parametrize("point,resume_step", DANGEROUS, ids=[p for p, _ in DANGEROUS])
def test_kill_at_a_dangerous_instant_then_rerun_is_bit_identical(tmp_path, tiny_run, clean_adapter, point, resume_step):
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "data_prep", run / "data_prep")
    killed = subprocess.run(
        train_argv(run), env={**ENV, "SLM_FAULT": point}, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    adapter = run / "train" / "adapter"
    checkpoints = run / "train" / "adapter.checkpoints"
    assert not adapter.exists(), "a killed stage left an output"
    if point != "artifacts.commit.sealed":
        assert not (checkpoints / "latest").exists()

    proc = subprocess.run(train_argv(run), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if resume_step is None:
        assert "resumed from" not in proc.stderr
    else:
        assert f"resumed from the checkpoint at step {resume_step}" in proc.stderr
    if point == "train.checkpoint_swap":
        assert f"recovered the checkpoint at step {resume_step}" in proc.stderr
    assert file_hash(adapter / "adapter_model.safetensors") == clean_adapter
    assert not checkpoints.exists()
    assert not [p.name for p in (run / "train").iterdir() if p.name.startswith(".")]
