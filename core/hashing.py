"""Content hashes: of files, folders, code and the pinned library set."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "_artifact.json"
_CHUNK = 1 << 20


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` for every file under ``root`` but the marker, sorted."""
    root = Path(root)
    if root.is_file():
        return {root.name: file_hash(root)}
    return {
        p.relative_to(root).as_posix(): file_hash(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER and "__pycache__" not in p.parts
    }


def digest(obj) -> str:
    """A stable sha256 of any JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tree_hash(root: Path) -> str:
    return digest(tree_files(root))


# The package each stage's entry module is in: ``python -m stages.<stage>``.
STAGE_PACKAGE = "stages"
# The pin lists a stage image carries (images/stage/Dockerfile): hashed here, so the same on both sides.
PIN_FILES = ("requirements.txt", "requirements-nodeps.txt")
# Import names whose distribution is named otherwise.
DISTRIBUTION = {"yaml": "pyyaml"}


def code_hash(stage: str) -> str:
    """What a stage runs: the project modules its entry module may import (its import closure,
    imports.py) and the pin lines of the other packages they import; nothing else, so editing
    code no stage imports (the CLI's Olive importer, an engine's client) keeps every cache entry."""
    from core.imports import closure, module_file

    modules, packages = closure(f"{STAGE_PACKAGE}.{stage}.__main__", ROOT)
    parts = {module_file(m, ROOT).relative_to(ROOT).as_posix(): file_hash(module_file(m, ROOT)) for m in modules}
    parts["pins"] = pins(packages)
    return digest(parts)


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(packages) -> dict[str, str | None]:
    """``{import name: its requirement line}`` (None: the name has no line in the pin lists)."""
    lines: dict[str, str] = {}
    for fname in PIN_FILES:
        path = ROOT / fname
        for line in path.read_text().splitlines() if path.is_file() else ():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines[_canon(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0])] = line
    return {p: lines.get(_canon(DISTRIBUTION.get(p, p))) for p in sorted(packages)}
