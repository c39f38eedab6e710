"""Publishing into an output folder the engine owns and nobody can rename (AzureML rw_mount).

On AzureML an output defaults to a mount; renaming the mounted folder is EBUSY, and blob
mounts have no folder rename at all. The artifact contract then commits in place: the old
marker goes first, the files are written into the folder, the marker comes last and
atomically. These tests give real stages a real mount point (a tmpfs, so they need root, as
CI has) and check that the output is sealed, verifies and feeds the next stage, and that a
stage killed part-way leaves no valid marker.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TINY

from core import artifacts
from core.config import load_config
from core.errors import UserError
from core.hashing import MARKER
from engines.local import stage_argv
from pipeline import DAG

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
CFG = load_config(TINY)


@pytest.fixture
def mount(tmp_path):
    """``mount(path)`` makes ``path`` a fresh tmpfs mount point; all are unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("these tests mount a tmpfs and need root (CI runs them as root)")
    made: list[Path] = []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path)], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"mount -t tmpfs {path}: {proc.stderr.strip()}"
        made.append(path)
        assert os.path.ismount(path)
        return path

    yield make
    for path in reversed(made):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _stage(stage: str, run: Path, *extra: str) -> list[str]:
    return [sys.executable, *stage_argv(DAG[stage], CFG, str(run))[1:], *extra]


def _run(stage: str, run: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        _stage(stage, run, *extra), env={**ENV, **(env or {})}, cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _assert_sealed_in_place(folder: Path, artifact_type: str) -> dict:
    assert os.path.ismount(folder), "the mount point itself must hold the output"
    marker = artifacts.verify(folder, artifact_type)
    assert not (folder / (MARKER + ".part")).exists()
    assert not list(folder.parent.glob(f".{folder.name}.*")), "nothing may be left beside the mount point"
    assert sorted(marker["files"]) == sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER
    )
    return marker


def test_the_mount_reproduces_the_azureml_failure(tmp_path, mount):
    """The sibling-rename commit cannot work here: renaming a mount point is EBUSY."""
    folder = mount(tmp_path / "out")
    with pytest.raises(OSError) as err:
        os.replace(folder, tmp_path / "elsewhere")
    assert err.value.errno == errno.EBUSY


def test_stages_publish_into_mount_points_and_chain(tmp_path, mount):
    run = tmp_path / "run"
    dataset = mount(run / "data_prep" / "dataset")
    (dataset / "left-over.txt").write_text("from an earlier attempt\n")  # an engine may hand over a used folder
    proc = _run("data_prep", run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = _assert_sealed_in_place(dataset, "Dataset")
    assert "left-over.txt" not in marker["files"] and not (dataset / "left-over.txt").exists()

    # The same stage into a plain folder (the sibling-rename path) makes the same artifact.
    plain = tmp_path / "plain"
    assert _run("data_prep", plain).returncode == 0
    assert artifacts.verify(plain / "data_prep" / "dataset")["content_hash"] == marker["content_hash"]

    # The next stage takes the mounted dataset as input and publishes into a mount as well.
    adapter = mount(run / "train" / "adapter")
    proc = _run("train", run, env={"SLM_CHECKPOINT_DIR": str(tmp_path / "ckpt")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = _assert_sealed_in_place(adapter, "Model")
    assert trained["inputs"] == {"dataset": marker["content_hash"]}
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0


def test_stage_killed_before_the_marker_leaves_no_valid_output(tmp_path, mount):
    run = tmp_path / "run"
    dataset = mount(run / "data_prep" / "dataset")
    assert _run("data_prep", run).returncode == 0
    first = artifacts.verify(dataset, "Dataset")

    # A second attempt (other parameters) is SIGKILLed after writing every file, before the
    # marker: the folder holds a complete-looking dataset, and the old marker is gone.
    proc = _run("data_prep", run, "--data.seed", "7", env={"SLM_FAULT": "artifacts.commit"})
    assert proc.returncode == -signal.SIGKILL
    assert (dataset / "train.jsonl").is_file() and (dataset / "eval.jsonl").is_file()
    assert artifacts.read_marker(dataset) is None
    with pytest.raises(UserError, match="not a finished artifact"):
        artifacts.verify(dataset)

    # A consumer refuses it in one line, and a clean re-run seals it again.
    proc = _run("train", run, env={"SLM_CHECKPOINT_DIR": str(tmp_path / "ckpt")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: [train] ") and "Traceback" not in proc.stderr
    assert "not a finished artifact" in proc.stderr
    assert not (run / "train" / "adapter").exists()
    assert _run("data_prep", run, "--data.seed", "7").returncode == 0
    again = _assert_sealed_in_place(dataset, "Dataset")
    assert again["content_hash"] != first["content_hash"]  # the seed changed the split


def test_interrupted_stage_empties_its_mounted_output(tmp_path, mount):
    run = tmp_path / "run"
    assert _run("data_prep", run).returncode == 0
    adapter = mount(run / "train" / "adapter")
    # The mount holds a finished artifact from before (sealed in place through the same API).
    tmp = artifacts.begin(adapter)
    assert tmp == adapter
    (adapter / "weights.bin").write_bytes(b"old")
    artifacts.commit(tmp, adapter, {"type": "Model"})
    artifacts.verify(adapter, "Model")

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        _stage("train", run, "--train.max_steps", "400"),
        env={**ENV, "SLM_CHECKPOINT_DIR": str(ckpt)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if list(ckpt.glob("*/latest/meta.json")):  # training is under way
            break
        time.sleep(0.05)
    assert proc.poll() is None, "train ended before it could be interrupted"
    assert artifacts.read_marker(adapter) is None, "the old marker must go before the stage writes"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1]
    assert os.path.ismount(adapter) and list(adapter.iterdir()) == []


def test_commit_falls_back_to_in_place_when_the_rename_is_refused(tmp_path, mount):
    """The folder became unrenamable after ``begin`` chose the sibling path (EBUSY at commit):
    the files are moved in (across file systems) and the marker is written last."""
    final = tmp_path / "out"
    final.mkdir()
    tmp = artifacts.begin(final)
    assert tmp != final and tmp.parent == final.parent
    (tmp / "sub").mkdir()
    (tmp / "sub" / "a.txt").write_text("a")
    (tmp / "b.txt").write_text("b")
    mount(final)
    (final / "stale.txt").write_text("stale")
    marker = artifacts.commit(tmp, final, {"type": "Dataset"})
    assert not tmp.exists()
    assert sorted(marker["files"]) == ["b.txt", "sub/a.txt"]
    _assert_sealed_in_place(final, "Dataset")
    assert json.loads((final / MARKER).read_text())["content_hash"] == marker["content_hash"]


def test_abort_in_place_clears_only_what_is_unfinished(tmp_path, mount):
    a, b = mount(tmp_path / "a"), mount(tmp_path / "b")
    ta, tb = artifacts.begin(a), artifacts.begin(b)
    assert (ta, tb) == (a, b)
    (a / "x").write_text("x")
    (b / "y").write_text("y")
    artifacts.commit(ta, a, {"type": "Dataset"})
    # The second output fails: the harness aborts both; the sealed one stays, as after a rename.
    artifacts.abort(ta)
    artifacts.abort(tb)
    artifacts.verify(a, "Dataset")
    assert os.path.ismount(b) and list(b.iterdir()) == []
