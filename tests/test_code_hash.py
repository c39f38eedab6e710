"""A stage's code hash covers what it runs and nothing else (core/hashing.py).

In a copy of the project, one file is edited at a time and the local runner's own cache check is
asked about each stage of the session's tiny run: code no stage imports (the CLI's Olive importer,
an engine's compiler and client) leaves every stage cached and every image's code label
unchanged; the artifact contract, which every stage imports, re-runs them all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

from core.imports import closure, module_file
from pipeline import DAG
from stages.registry import STAGES

TINY_RUN_STAGES = [s.name for s in DAG]  # the single-task DAG the tiny run ran

CHECK = """
import json, sys
from pathlib import Path
from core.config import load_config
from core.hashing import code_hash
from pipeline import DAG
from engines.local import cached
cfg = load_config("configs/tiny-phi3.yaml")
print(json.dumps({s.name: [cached(s, cfg, Path(sys.argv[1])), code_hash(s.name)] for s in DAG}))
"""

IMAGE = ("core", "runtime", "stages")  # what images/stage/Dockerfile copies

# (file edited, every stage still cached?)
EDITS = {
    "cli/olive.py": True,  # the CLI's Olive importer
    "engines/kfp.py": True,  # an engine: compiler and client
    "engines/argo.py": True,
    "core/artifacts.py": False,  # the artifact contract: every stage seals with it
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    copy = tmp_path_factory.mktemp("project")
    for rel in files:
        if rel.startswith(("tests/", "bench/", "docs/")) or not (ROOT / rel).is_file():
            continue
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    return copy


def _check(project, tiny_run) -> dict[str, list]:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(tiny_run)],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(project), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("edited", EDITS)
def test_an_edit_reruns_exactly_the_stages_that_import_it(project, tiny_run, edited):
    before = _check(project, tiny_run)
    assert all(hit for hit, _ in before.values()), "the unedited copy must reuse the tiny run"
    original = (project / edited).read_text()
    (project / edited).write_text(original + "\n# an edit\n")
    try:
        after = _check(project, tiny_run)
    finally:
        (project / edited).write_text(original)
    still = EDITS[edited]
    assert {s: hit for s, (hit, _) in after.items()} == dict.fromkeys(TINY_RUN_STAGES, still)
    assert {s: h == before[s][1] for s, (_, h) in after.items()} == dict.fromkeys(TINY_RUN_STAGES, still)


def test_a_stage_closure_is_what_its_image_carries():
    """The stage image copies core/, runtime/ and stages/ (images/stage/Dockerfile): a module of its
    closure outside them would hash differently in the container than on the runner."""
    for name in STAGES:
        modules, _ = closure(f"stages.{name}.__main__")
        outside = sorted(m for m in modules if module_file(m).relative_to(ROOT).parts[0] not in IMAGE)
        assert not outside, f"{name} imports {outside}, which its image does not carry"
