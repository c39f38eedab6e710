"""No function over 60 lines outside tests/ and bench/ (issue 20), read with ast. The allow-list
holds the ones not yet split, each with its size when listed: it may only shrink."""

from __future__ import annotations

import ast

from helpers import ROOT

LIMIT = 60
NOT_YET_SPLIT: dict[tuple[str, str], int] = {}  # (file, function): lines when listed


def function_sizes() -> dict[tuple[str, str], int]:
    sizes = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "bench", ".venv") or any(p.startswith(".") for p in rel.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = (rel.as_posix(), node.name)
                sizes[key] = max(sizes.get(key, 0), node.end_lineno - node.lineno + 1)
    return sizes


def test_no_function_over_the_limit():
    sizes = function_sizes()
    assert len(sizes) > 300  # the whole project was read
    over = {k: n for k, n in sizes.items() if n > LIMIT and n > NOT_YET_SPLIT.get(k, 0)}
    assert over == {}, f"functions over {LIMIT} lines (split them, or they grew past their listed size): {over}"
    stale = [k for k in NOT_YET_SPLIT if sizes.get(k, 0) <= LIMIT]
    assert stale == [], f"split already: remove from NOT_YET_SPLIT: {stale}"
