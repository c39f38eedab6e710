"""What users get: the default config compiled for each engine, byte for byte.

``tests/golden/<engine>/`` holds the reviewed output. A change to an adapter, the registry or
a config default that changes a compiled file fails here with the diff, so the review of the
change shows what a user's cluster will run. After reviewing it, accept it with
``make golden`` (``SLM_UPDATE_GOLDEN=1 pytest tests/test_golden.py``).
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest
from helpers import ROOT

from core.config import load_config
from engines import base
from pipeline import DAG

GOLDEN = Path(__file__).parent / "golden"
CONFIG = ROOT / "configs" / "default.yaml"


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("engine", base.names())
def test_compiled_default_config_matches_the_reviewed_files(engine, tmp_path):
    target = base.get(engine)
    out = tmp_path / engine
    out.mkdir()
    dest = out if target.default_out == engine else out / target.default_out
    target.compile(DAG, load_config(CONFIG), dest)
    reviewed = GOLDEN / engine
    if os.environ.get("SLM_UPDATE_GOLDEN"):
        shutil.rmtree(reviewed, ignore_errors=True)
        shutil.copytree(out, reviewed)
    got, want = _files(out), _files(reviewed)
    assert sorted(got) == sorted(want), f"{engine}: compiled files differ from tests/golden/{engine}/"
    for name in got:
        if got[name] != want[name]:
            diff = "".join(
                list(
                    difflib.unified_diff(
                        want[name].splitlines(True),
                        got[name].splitlines(True),
                        f"golden/{engine}/{name}",
                        f"compiled/{name}",
                    )
                )[:80]
            )
            pytest.fail(f"{engine}/{name} changed; review the diff, then `make golden` to accept it:\n{diff}")
