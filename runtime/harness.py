"""A stage's entry point: the stage core (core/runner.py) with the hooks its engine asks for."""

from __future__ import annotations

import sys
from typing import Callable

from core.runner import run_stage
from runtime.hooks import from_environment


def main(spec, run: Callable[..., None], argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run_stage(spec, run, argv, from_environment(spec, argv))
