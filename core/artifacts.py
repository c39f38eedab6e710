"""The artifact contract: an artifact is a folder, written atomically, sealed by a marker.

A stage writes into a hidden sibling folder and renames it into place only on success,
so a killed stage never leaves an output that looks finished. The marker (``_artifact.json``)
records what made the artifact and the content hash of every file in it; a consumer
refuses an input whose marker is missing or whose files no longer match it.

Where an engine hands the stage an output folder that cannot be renamed (an AzureML
``rw_mount`` output is a mount point: renaming it is EBUSY, and blob mounts have no folder
rename at all), the artifact is committed *in place*: ``begin`` removes the old marker
first, then the old content, and the stage writes straight into the folder; ``commit``
writes the marker last, as ``_artifact.json.part`` renamed over ``_artifact.json`` inside
the folder (a file rename, which those mounts support). A folder without a valid marker is
unfinished whatever else it holds, so a consumer never takes a half-written output: a
stage killed before the marker leaves none, and ``abort`` clears the folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

from core import faults
from core.errors import UserError
from core.hashing import MARKER, digest, tree_files

log = logging.getLogger("slm")

# Where an engine reads output parameters from files (Argo's ``valueFrom.path``): one file per
# parameter, named after it. Set in the task's environment, so the command line stays the same.
PARAMETERS_DIR_ENV = "SLM_OUTPUT_PARAMETERS_DIR"

# A rename of (or onto) the final folder fails with these where the folder is a mount point
# (EBUSY), on another file system (EXDEV), or on a mount without folder renames (blobfuse:
# EPERM/ENOTSUP/EINVAL, depending on the driver). Then the output is committed in place.
NO_RENAME = frozenset({errno.EBUSY, errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL})
# Creating the hidden sibling fails with these where the engine's folder sits in a parent
# the stage may not write to: then the output is committed in place too.
NO_SIBLING = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

# Output folders ``begin`` handed out to be written in place: False while open, True once sealed.
_in_place: dict[Path, bool] = {}


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
            changed = sorted(set(files.items()).symmetric_difference(marker.get("files", {}).items()))
            names = sorted({name for name, _ in changed})[:3]
            raise UserError(f"{path} was modified after it was written ({', '.join(names)}); re-run the stage")
    return marker


def owned(folder: Path) -> bool:
    """Whether ``folder`` is this pipeline's to replace: missing, empty, or sealed (a marker, or
    the marker's temporary of an interrupted seal). Anything else belongs to the user."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return True
    if folder.is_symlink() or not folder.is_dir():
        return False
    return (folder / MARKER).is_file() or (folder / (MARKER + ".part")).is_file() or not any(folder.iterdir())


def refuse_unowned(folder: Path) -> None:
    """The one decision before anything replaces or deletes an output folder: a UserError, with
    nothing deleted, unless this pipeline made it (``owned``)."""
    if not owned(folder):
        raise UserError(
            f"{folder}: is in the way of an output and is not an artifact this pipeline wrote (no {MARKER}); "
            "nothing was deleted: move it away or choose another output folder"
        )


def remove(folder: Path) -> None:
    """Delete an output folder of ours (the runner's stale outputs); refuse anything else."""
    refuse_unowned(folder)
    shutil.rmtree(folder, ignore_errors=True)


def tmp_path(final: Path) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def must_commit_in_place(final: Path) -> bool:
    """An existing output folder that is a mount point: it can be written, never renamed."""
    final = Path(final)
    return final.is_dir() and not final.is_symlink() and os.path.ismount(final)


def begin(final: Path) -> Path:
    """The folder a stage writes ``final`` into: a fresh hidden sibling, renamed into place by
    ``commit``; or, for a folder that cannot be renamed, ``final`` itself, emptied (its old
    marker first, so it stops being a finished artifact before anything else changes)."""
    final = Path(final)
    if must_commit_in_place(final):
        return _begin_in_place(final)
    refuse_unowned(final)  # the commit replaces it
    final.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed stage: unsealed (or sealed but never renamed) temporaries, and the
    # previous output a killed replace had moved aside. Nothing reads hidden folders; drop them.
    for stale in [*final.parent.glob(f".{final.name}.tmp-*"), *final.parent.glob(f".{final.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tmp_path(final)
    try:
        tmp.mkdir()
    except OSError as e:
        if e.errno in NO_SIBLING and final.is_dir():
            return _begin_in_place(final)
        raise
    return tmp


def commit(tmp: Path, final: Path, meta: dict) -> dict:
    """Seal ``tmp`` with its marker and rename it to ``final`` in one step; where ``final``
    cannot be renamed, move the files into it and write the marker last."""
    faults.point("artifacts.commit")
    tmp, final = Path(tmp), Path(final)
    if tmp == final:
        marker = _seal(final, meta, tree_files(final))
        _in_place[final] = True  # sealed: an abort after this (a later output failing) keeps it
        return marker
    files = tree_files(tmp)
    marker = _seal(tmp, meta, files)
    faults.point("artifacts.commit.sealed")  # sealed, not yet renamed: still a hidden temporary
    try:
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            faults.point("artifacts.commit.swap")  # between the two renames: no output at all
            try:
                os.replace(tmp, final)
            except OSError:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:
        if e.errno not in NO_RENAME:
            raise
        log.info("%s cannot be renamed into place (%s); committing in place", final, os.strerror(e.errno))
        (tmp / MARKER).unlink()
        final.mkdir(exist_ok=True)
        _begin_in_place(final)
        for entry in sorted(tmp.iterdir()):
            shutil.move(str(entry), str(final / entry.name))  # copies where a folder rename fails
        shutil.rmtree(tmp, ignore_errors=True)
        marker = _seal(final, meta, files)
        _in_place[final] = True
    return marker


def abort(tmp: Path) -> None:
    """Throw away an unfinished output: the temporary sibling, or an in-place folder's content."""
    tmp = Path(tmp)
    if tmp not in _in_place:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already if it was committed (renamed)
    elif not _in_place.pop(tmp):
        clear(tmp)


def clear(folder: Path) -> None:
    """Empty ``folder`` but keep it (a mount point cannot go): its marker first."""
    folder = Path(folder)
    for name in (MARKER, MARKER + ".part"):
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _begin_in_place(final: Path) -> Path:
    clear(final)
    _in_place[final] = False
    return final


def _seal(folder: Path, meta: dict, files: dict[str, str]) -> dict:
    """Write the marker into ``folder`` last and atomically: ``.part``, then a file rename."""
    marker = {**meta, "files": files, "content_hash": digest(files), "finished_at": time.time()}
    part = folder / (MARKER + ".part")
    with open(part, "w") as f:
        f.write(json.dumps(marker, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, folder / MARKER)
    return marker


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")
