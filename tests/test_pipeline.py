"""The whole DAG on the tiny Phi-3: summary, cache hits and misses, resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from helpers import ROOT, STAGE_OUTPUTS, TINY, run_pipeline, summary

from core.hashing import file_hash


def test_full_run_writes_summary_and_metrics(tiny_run):
    s = summary(tiny_run)
    assert s["status"] == "ok"
    assert list(s["stages"]) == ["data_prep", "train", "merge", "onnx_build", "evaluate"]
    for stage in s["stages"].values():
        assert stage["status"] == "ok" and stage["cached"] is False and stage["seconds"] > 0
    for model in ("pytorch", "onnx_int4"):
        assert 0.0 <= s["metrics"][model]["accuracy"] <= 1.0
        assert 0.0 <= s["metrics"][model]["macro_f1"] <= 1.0
    for stage, output in STAGE_OUTPUTS:
        marker = json.loads((tiny_run / stage / output / "_artifact.json").read_text())
        assert marker["stage"] == stage and len(marker["content_hash"]) == 64


def test_second_run_is_fully_cached_and_a_change_reruns_only_downstream(tmp_path, tiny_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    again = run_pipeline(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert all(st["cached"] for st in summary(out)["stages"].values())
    assert "cached (inputs, parameters and code unchanged)" in again.stdout

    changed = run_pipeline(out, "onnx.int4_block_size=32")
    assert changed.returncode == 0, changed.stderr[-2000:]
    cached = {name: st["cached"] for name, st in summary(out)["stages"].items()}
    assert cached == {"data_prep": True, "train": True, "merge": True, "onnx_build": False, "evaluate": False}


def test_resume_after_sigterm_gives_the_same_adapter(tmp_path):
    """Kill training after its first checkpoint; the re-run resumes and matches a clean run."""
    sets = ["train.max_steps=16", "train.checkpoint_every=2"]
    clean = tmp_path / "clean"
    assert run_pipeline(clean, *sets).returncode == 0

    killed = tmp_path / "killed"
    args = [sys.executable, str(ROOT / "pipeline.py"), "run", "--config", str(TINY), "--out", str(killed)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    )
    ckpt = killed / "train" / "adapter.checkpoints" / "latest" / "meta.json"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "training never checkpointed"
    # SIGTERM the train stage itself, as a preempted node would.
    child = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in child:
        subprocess.run(["kill", "-TERM", pid])
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, output[-2000:]
    assert not (killed / "train" / "adapter").exists(), "a killed stage left an output"
    step = json.loads(ckpt.read_text())["step"]
    assert 0 < step < 16

    resumed = run_pipeline(killed, *sets)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from the checkpoint at step {step}" in resumed.stderr
    name = "adapter_model.safetensors"
    assert file_hash(killed / "train" / "adapter" / name) == file_hash(clean / "train" / "adapter" / name)
    assert not (killed / "train" / "adapter.checkpoints").exists(), "checkpoints are removed after success"
