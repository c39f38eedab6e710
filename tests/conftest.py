"""Shared fixtures: one full pipeline run on the tiny Phi-3, reused by many tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers.py, for tests in subfolders too
from helpers import run_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One full DAG run on the tiny Phi-3; tests read its artifacts, never modify them."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    proc = run_pipeline(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out
