"""Change one thing at a time; exactly the stages downstream of it must re-run. 0 stale hits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, TINY, run_cli, summary

from core.cache import cache_key as local_cache_key
from core.config import load_config
from core.models import resolve
from engines.local import cached
from pipeline import DAG

ALL = ("data_prep", "train", "merge", "onnx_build", "evaluate")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project (code, configs, data, pins) that tests may edit in place."""
    copy = tmp_path_factory.mktemp("project") / "p"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".whl", ".build", "build", "*.pyc"),
    )
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


def replace(path: Path, old: str, new: str) -> bytes:
    original = path.read_bytes()
    assert old.encode() in original
    path.write_bytes(original.replace(old.encode(), new.encode()))
    return original


# (case, how to change it: returns an undo callable, --set overrides, the stages that must re-run)
CASES = [
    ("nothing", lambda p: None, [], ()),
    ("one-byte-of-data", lambda p: (p / "data/tone.jsonl", flip_byte(p / "data/tone.jsonl", 20)), [], ALL),
    (
        "template",
        lambda p: None,
        ["data.text_template=<|user|>\nTone of: {phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"],
        ALL,
    ),
    ("lora-r", lambda p: None, ["train.lora.r=4"], ALL[1:]),
    ("quantization-option", lambda p: None, ["onnx.int4_block_size=32"], ALL[3:]),
    # merge's code changed, so merge re-runs; its output is byte-identical, and the keys of the
    # stages after it hash that content, so they stay cached.
    (
        "stage-code",
        lambda p: (p / "stages/merge/stage.py", edit(p / "stages/merge/stage.py", "\n# edited\n")),
        [],
        ALL[2:3],
    ),
    (
        "shared-code",
        lambda p: (p / "core/scoring.py", edit(p / "core/scoring.py", "\n# edited\n")),
        [],
        ALL,
    ),
    # A stage's key takes the pin lines of the packages it imports (hashing.code_hash): pydantic's
    # is every stage's, matplotlib's only evaluate's, and a comment is no pin.
    (
        "pinned-versions",
        lambda p: (p / "requirements.txt", replace(p / "requirements.txt", "pydantic>=2\n", "pydantic>=2.1\n")),
        [],
        ALL,
    ),
    (
        "pin-of-one-stage",
        lambda p: (p / "requirements.txt", replace(p / "requirements.txt", "matplotlib==3.11.2", "matplotlib==3.11.3")),
        [],
        ALL[4:],
    ),
    ("comment-in-pins", lambda p: (p / "requirements.txt", edit(p / "requirements.txt", "\n# bumped\n")), [], ()),
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


# --- The hash chain, checked without the runner's cleanup ----------------------------------------
# The runner deletes a stage's downstream outputs before re-running it, so the matrix above can
# never show a downstream stale hit. Here every downstream stage's own cache check runs against
# an upstream that changed (re-sealed, so it is a valid artifact), with its old output left in place.


def reseal(folder: Path) -> None:
    """Re-seal an artifact after changing a file, as its stage would have: valid, and different."""
    from core.hashing import MARKER, digest, tree_files

    marker = json.loads((folder / MARKER).read_text())
    files = tree_files(folder)
    marker.update(files=files, content_hash=digest(files))
    (folder / MARKER).write_text(json.dumps(marker))


# One file per upstream artifact type, changed by one appended byte (still valid JSON/JSONL).
CHANGED_FILE = {
    "data_prep.dataset": "train.jsonl",
    "train.adapter": "train_log.jsonl",
    "merge.model": "parity.json",
    "onnx_build.onnx_model": "build_info.json",
}
WIRES = [(s.name, port, src) for s in DAG for port, src in s.wires.items()]


def copy_run(tiny_run: Path, run: Path, cfg) -> Path:
    """A copy of the shared run whose seals carry the keys the stages would compute now: code
    edited since the shared run was made (a working tree) would otherwise make every check a
    miss. The keys are the harness's own, so a miss below is the hash chain's doing."""
    from core.hashing import MARKER

    shutil.copytree(tiny_run, run)
    for step in DAG:
        inputs = {
            name: json.loads((run.joinpath(*src) / MARKER).read_text())["content_hash"]
            for name, src in step.wires.items()
        }
        for port in step.spec.outputs:
            path = run / step.name / port.name / MARKER
            marker = json.loads(path.read_text())
            marker["cache_key"] = local_cache_key(step.spec, step.spec.params(cfg), inputs)
            path.write_text(json.dumps(marker))
    return run


def change_upstream(run: Path, src) -> None:
    from core.spec import PortRef

    src = PortRef.parse(src)
    folder = run.joinpath(*src)
    with open(folder / CHANGED_FILE[str(src)], "a") as f:
        f.write("\n")
    reseal(folder)


@pytest.mark.parametrize("stage,port,src", WIRES, ids=[f"{s}<-{src}" for s, _, src in WIRES])
def test_downstream_cache_check_sees_a_changed_upstream(tmp_path, tiny_run, stage, port, src):
    cfg = load_config(TINY)
    run = copy_run(tiny_run, tmp_path / "run", cfg)
    assert cached(DAG[stage], cfg, run), "control: the unchanged run must be a cache hit"
    change_upstream(run, src)
    assert not cached(DAG[stage], cfg, run), f"{stage} would serve its old output for a changed {src}: a stale hit"


def test_the_chain_check_catches_a_key_that_ignores_inputs(tmp_path, tiny_run, monkeypatch):
    """The check above can fail: with a cache key that forgets the input hashes (a broken chain),
    the downstream stage reports a hit for a changed upstream."""
    import engines.local as local
    from core.hashing import MARKER

    cfg = load_config(TINY)
    run = copy_run(tiny_run, tmp_path / "run", cfg)
    broken = lambda spec, params, inputs: local_cache_key(spec, params, {})  # noqa: E731
    monkeypatch.setattr(local, "cache_key", broken)
    step = DAG["merge"]
    marker_path = run / "merge" / "model" / MARKER  # as if the stages had sealed with the broken key too
    marker = json.loads(marker_path.read_text())
    marker["cache_key"] = broken(step.spec, step.spec.params(cfg), None)
    marker_path.write_text(json.dumps(marker))
    change_upstream(run, "train.adapter")
    assert cached(step, cfg, run), "a key without inputs should give exactly the stale hit the check looks for"


def test_same_data_at_another_path_is_a_cache_hit(tmp_path, tiny_run):
    """Cache keys hash content, never paths: the tiny run's data moved elsewhere hits every stage;
    the same bytes with one changed, or read by another reader (suffix), do not."""
    run = copy_run(tiny_run, tmp_path / "run", load_config(TINY))  # keys made with data/tone.jsonl
    moved = tmp_path / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    shutil.copy(ROOT / "data" / "tone.jsonl", moved)
    cfg = load_config(TINY, [f"data.path={moved}"])
    assert all(cached(step, cfg, run) for step in DAG)
    as_json = moved.with_suffix(".json")
    shutil.copy(moved, as_json)
    assert not cached(DAG["data_prep"], load_config(TINY, [f"data.path={as_json}"]), run)
    flip_byte(moved, 20)
    assert not cached(DAG["data_prep"], cfg, run)


def test_moved_data_reruns_nothing_through_the_cli(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "run", load_config(TINY))
    moved = tmp_path / "moved.jsonl"
    shutil.copy(ROOT / "data" / "tone.jsonl", moved)
    proc = run_cli(
        str(ROOT / "pipeline.py"), "run", "--config", str(TINY), "--out", str(run), "--set", f"data.path={moved}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not any(not st["cached"] for st in summary(run)["stages"].values())
