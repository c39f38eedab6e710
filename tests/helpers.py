"""Helpers shared by the test suites: run the CLI and the stages as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline import DAG

# The single-task DAG's stages, in order (the registry also holds the multi-task DAG's own).
DAG_SPECS = {step.name: step.spec for step in DAG}
# (stage, output port) of every stage's artifact, in DAG order.
STAGE_OUTPUTS = [(name, port.name) for name, spec in DAG_SPECS.items() for port in spec.outputs]

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-phi3.yaml"

# The offline hub of conftest's ``hub`` fixture: one id, two revisions of the tiny Phi-3.
HUB_ID = "slm-test/tiny-phi3"
HUB_COMMITS = {"main": "a" * 40, "v2": "b" * 40}
HUB_CHAT = "{% for m in messages %}<|v2|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def run_cli(
    *args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None, text: bool = True, **popen
) -> subprocess.CompletedProcess:
    """Run a command the way a user would: a fresh interpreter, output captured (``text=False``:
    the bytes as a log file gets them; text mode turns each carriage return into a newline)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=text, timeout=timeout, env=full_env, **popen
    )


def run_pipeline(out: Path, *overrides: str, config: Path = TINY, **kw) -> subprocess.CompletedProcess:
    sets = [x for o in overrides for x in ("--set", o)]
    return run_cli(str(ROOT / "pipeline.py"), "run", "--config", str(config), "--out", str(out), *sets, **kw)


def stage_cli(stage: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return run_cli("-m", f"stages.{stage}", *args, **kw)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())
