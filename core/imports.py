"""The project's import graph, read from its source with ``ast``: every ``import`` of a module,
lazy ones inside functions included, since they run too. A stage's code hash covers the closure
of its entry module (hashing.code_hash), and tests/test_layers.py checks the layers with it."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of project module ``name`` (a package: its ``__init__.py``), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@cache
def direct_imports(name: str, root: Path = ROOT) -> tuple[frozenset[str], frozenset[str]]:
    """``(project modules, other top-level names)`` that module ``name`` imports anywhere in it."""
    path = module_file(name, root)
    tree = ast.parse(path.read_text(), str(path))
    package = _package(name, path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__runs__" for t in node.targets):
            found.update(ast.literal_eval(node.value))  # modules it runs as `python -m`: what it runs too
    project, other = set(), set()
    for target in found:
        if module_file(target, root):
            project.add(target)
        elif not module_file(target.rpartition(".")[0] or target, root):
            top = target.split(".")[0]
            if top not in sys.stdlib_module_names and not module_file(top, root):
                other.add(top)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    for target in list(project):
        parts = target.split(".")
        project.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if module_file(p, root))
    project.discard(name)
    return frozenset(project), frozenset(other)


def closure(name: str, root: Path = ROOT) -> tuple[set[str], set[str]]:
    """Every project module that running module ``name`` may import (itself included), and the
    top-level names of the other packages they import."""
    seen, other, todo = set(), set(), [name]
    parts = name.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    while todo:
        current = todo.pop()
        if current in seen or not module_file(current, root):
            continue
        seen.add(current)
        project, names = direct_imports(current, root)
        other |= names
        todo += project
    return seen, other


def project_modules(packages: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """Every module under the top-level ``packages`` (a package or a single ``.py``)."""
    out = []
    for top in packages:
        if (root / f"{top}.py").is_file():
            out.append(top)
            continue
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out.append(".".join(parts))
    return out
