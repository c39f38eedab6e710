"""The artifact contract: an artifact is a folder, written atomically, sealed by a marker.

A stage writes into a hidden sibling folder and renames it into place only on success,
so a killed stage never leaves an output that looks finished. The marker (``_artifact.json``)
records what made the artifact and the content hash of every file in it; a consumer
refuses an input whose marker is missing or whose files no longer match it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .errors import UserError
from .hashing import MARKER, digest, tree_files


def read_marker(path: Path) -> dict | None:
    marker = Path(path) / MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def verify(path: Path, expected_type: str | None = None, deep: bool = True) -> dict:
    """Return the marker of a finished artifact, or raise a UserError saying what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"input artifact not found: {path}")
    marker = read_marker(path)
    if marker is None:
        raise UserError(f"{path} is not a finished artifact (no valid {MARKER}); re-run the stage that makes it")
    for link in (p for p in path.rglob("*") if p.is_symlink()):
        target = link.resolve()
        if not target.is_relative_to(path.resolve()):
            raise UserError(f"{path} holds a link that leaves the artifact ({link.name} -> {target}); refusing it")
    if expected_type and marker.get("type") != expected_type:
        raise UserError(f"{path} is a {marker.get('type')} artifact, expected {expected_type}")
    if deep:
        files = tree_files(path)
        if digest(files) != marker.get("content_hash"):
            changed = sorted(
                set(files.items()).symmetric_difference(marker.get("files", {}).items())
            )
            names = sorted({name for name, _ in changed})[:3]
            raise UserError(f"{path} was modified after it was written ({', '.join(names)}); re-run the stage")
    return marker


def tmp_path(final: Path) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def begin(final: Path) -> Path:
    """Make a fresh temporary sibling of ``final`` to write into."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tmp_path(final)
    tmp.mkdir()
    return tmp


def commit(tmp: Path, final: Path, meta: dict) -> dict:
    """Seal ``tmp`` with its marker and rename it to ``final`` in one step."""
    tmp, final = Path(tmp), Path(final)
    files = tree_files(tmp)
    marker = {**meta, "files": files, "content_hash": digest(files), "finished_at": time.time()}
    marker_tmp = tmp / (MARKER + ".part")
    marker_tmp.write_text(json.dumps(marker, indent=2, sort_keys=True))
    os.replace(marker_tmp, tmp / MARKER)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return marker


def abort(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")
