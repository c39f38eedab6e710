"""Change one thing at a time; exactly the stages downstream of it must re-run. 0 stale hits."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_cli, summary

from components.common.models import resolve

ALL = ("data_prep", "train", "merge", "onnx_build", "evaluate")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project (code, configs, data, pins) that tests may edit in place."""
    copy = tmp_path_factory.mktemp("project") / "p"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".whl", ".build", "build", "*.pyc"))
    return copy


def run_in(project: Path, out: Path, *sets: str):
    args = [str(project / "pipeline.py"), "run", "--config", str(project / "configs/tiny-phi3.yaml"), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(*args, cwd=project, env={"PYTHONPATH": str(project)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: not st["cached"] for name, st in summary(out)["stages"].items()}


@pytest.fixture(scope="module")
def baseline(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "run"
    assert set(n for n, ran in run_in(project, out).items() if ran) == set(ALL)
    return out


def flip_byte(path: Path, offset: int) -> bytes:
    data = path.read_bytes()
    changed = bytearray(data)
    changed[offset] = ord("X") if changed[offset] != ord("X") else ord("Y")
    path.write_bytes(bytes(changed))
    return data


def edit(path: Path, text: str) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original + text.encode())
    return original


# (case, how to change it: returns an undo callable, --set overrides, the stages that must re-run)
CASES = [
    ("nothing", lambda p: None, [], ()),
    ("one-byte-of-data", lambda p: (p / "data/tone.jsonl", flip_byte(p / "data/tone.jsonl", 20)), [], ALL),
    ("template", lambda p: None, ["data.text_template=<|user|>\nTone of: {phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"], ALL),
    ("lora-r", lambda p: None, ["train.lora.r=4"], ALL[1:]),
    ("quantization-option", lambda p: None, ["onnx.int4_block_size=32"], ALL[3:]),
    ("stage-code", lambda p: (p / "components/merge/stage.py", edit(p / "components/merge/stage.py", "\n# edited\n")), [], ALL[2:]),
    ("shared-code", lambda p: (p / "components/common/scoring.py", edit(p / "components/common/scoring.py", "\n# edited\n")), [], ALL),
    ("pinned-versions", lambda p: (p / "requirements.txt", edit(p / "requirements.txt", "\n# bumped\n")), [], ALL),
]


@pytest.mark.parametrize("case,change,sets,expected", CASES, ids=[c[0] for c in CASES])
def test_change_invalidates_exactly_downstream(project, baseline, tmp_path, case, change, sets, expected):
    out = tmp_path / "run"
    shutil.copytree(baseline, out)
    undo = change(project)
    try:
        reran = run_in(project, out, *sets)
    finally:
        if undo:
            undo[0].write_bytes(undo[1])
    assert {n for n, ran in reran.items() if ran} == set(expected)


def test_base_model_files(project, tmp_path):
    """A local base model edited in place (same path) re-runs everything that reads it."""
    base = tmp_path / "base"
    shutil.copytree(resolve("tiny-random:phi3"), base)
    first = tmp_path / "run"
    assert all(run_in(project, first, f"model.base={base}").values())
    weights = base / "model.safetensors"
    flip_byte(weights, len(weights.read_bytes()) - 3)  # a weight's last byte, not the header
    reran = run_in(project, first, f"model.base={base}")
    assert {n for n, ran in reran.items() if ran} == set(ALL[1:])
