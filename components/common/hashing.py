"""Content hashes: of files, folders, code and the pinned library set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def code_hash(stage: str) -> str:
    """What a stage runs: its package, the shared helpers, the registry and the pin list."""
    parts = {}
    for rel in (f"components/{stage}", "components/common", "components/registry.py"):
        path = ROOT / rel
        for name, h in tree_files(path).items():
            parts[f"{rel}/{name}"] = h
    for pins in ("requirements.txt", "requirements-nodeps.txt"):
        if (ROOT / pins).is_file():
            parts[pins] = file_hash(ROOT / pins)
    return digest(parts)
