"""The one guard of every path a verb writes (``run --out``, ``compile --out``, ``import-olive --out``).

:func:`claim` decides, before anything is written, whether an output path may be used:

- it may not be, contain or sit inside an input of the same command, the source tree or a
  cache folder (files written there would be read back as input, or hashed as stage code);
- an existing file is overwritten only with ``--force``; an existing run folder must be one
  this pipeline made (it holds ``.run.lock``) or be empty;
- missing parent folders are created only under a folder that exists, is writable and is not
  the filesystem root, and the note says what was created.

Deleting is decided in ``artifacts.remove``: only folders this pipeline sealed (or its hidden
temporaries).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable

from core.errors import UserError
from core.hashing import ROOT

# What the source tree is: an output inside one of these would be hashed as stage code, or
# overwrite the code, the pins or the bundled data. configs/ is not here: `import-olive --out
# configs/NAME.yaml` is how a config is made (an existing one still needs --force).
SOURCE_ENTRIES = (
    "core",
    "runtime",
    "stages",
    "engines",
    "cli",
    "images",
    "manifests",
    "tests",
    "bench",
    "docs",
    "data",
    ".git",
    ".venv",
    "pipeline.py",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements.lock",
    "requirements-nodeps.txt",
    "Makefile",
    "pyproject.toml",
    "README.md",
)
RUN_MARKER = ".run.lock"  # every run folder holds it (engines/local.py run_lock)


def cache_folders() -> list[tuple[Path, str]]:
    home = Path.home() / ".cache"
    found = [
        (Path(os.environ.get("SLM_CACHE_DIR") or home / "slm-pipeline"), "the model cache (SLM_CACHE_DIR)"),
        (Path(os.environ.get("HF_HOME") or home / "huggingface"), "the Hugging Face cache (HF_HOME)"),
    ]
    if os.environ.get("SLM_CHECKPOINT_DIR"):
        found.append((Path(os.environ["SLM_CHECKPOINT_DIR"]), "the checkpoint cache (SLM_CHECKPOINT_DIR)"))
    return found


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def overlap(out: Path, inputs: Iterable[tuple[str | Path, str]]) -> str | None:
    """How ``out`` collides with a protected path, as a phrase, or None."""
    real = _real(out)
    protected = [(Path(p), what) for p, what in inputs if p]
    protected += [(ROOT, "the source tree")]
    protected += [(ROOT / name, f"the source tree ({name})") for name in SOURCE_ENTRIES]
    protected += cache_folders()
    for path, what in protected:
        p = _real(path)
        if real == p:
            return f"is {what} ({path})"
        if _inside(p, real):
            return f"contains {what} ({path})"
        if path != ROOT and _inside(real, p):
            return f"sits inside {what} ({path})"
    return None


def claim(
    out: str | Path,
    *,
    inputs: Iterable[tuple[str | Path, str]] = (),
    folder: bool = False,
    default_name: str | None = None,
    also: Iterable[str] = (),
    force: bool = False,
    run: bool = False,
    flag: str = "--out",
) -> Path:
    """The path to write for ``out``, its parents created; or a UserError that names the problem
    and what to do, with nothing written. ``folder``: the output is a folder; else a file (an
    existing folder then gets ``default_name`` inside it). ``also``: names of other files written
    next to the output (file: ``<stem><suffix>`` siblings; folder: paths inside it), checked like
    it. ``run``: a run folder, which must be new, empty or a run folder of ours."""
    given = str(out)
    path = Path(out)
    folder = folder or run
    if not given.strip():
        raise UserError(f"{flag}: empty; give a path")
    if not folder and default_name and path.is_dir():
        path = path / default_name
    if path.is_symlink() and not path.exists():
        raise UserError(
            f"{flag} {given}: a symbolic link to nothing (or a link loop); remove it or choose another path"
        )
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {given}: is a file, not a folder; choose a folder")
    if not folder and path.is_dir():
        raise UserError(f"{flag} {given}: is a folder; give a file path")
    problem = overlap(path, inputs)
    if problem:
        raise UserError(f"{flag} {given}: {problem}; choose a path outside it, e.g. runs/NAME or build/NAME")
    if run and path.is_dir() and not (path / RUN_MARKER).exists() and any(path.iterdir()):
        raise UserError(
            f"{flag} {given}: an existing folder that is not a run folder (no {RUN_MARKER}) and not empty; "
            "nothing was changed: choose a new or empty folder"
        )
    if not folder:
        siblings = [path] + [path.with_name(path.stem + suffix) for suffix in also]
    else:
        siblings = [path / name for name in also]
    if not force:
        for f in siblings:
            if f.exists() or f.is_symlink():
                raise UserError(f"{flag} {given}: {f} exists; pass --force to overwrite it, or choose another path")
    make_parents(path if folder or run else path.parent, given, flag)
    return path


def make_parents(folder: Path, given: str, flag: str = "--out") -> None:
    """Create ``folder`` and its missing parents, only under an existing, writable folder that is
    not the filesystem root; say on stderr what was created."""
    if folder.is_dir():
        if not os.access(folder, os.W_OK):
            raise UserError(f"{flag} {given}: cannot write there ({folder} is not writable); choose a writable folder")
        return
    missing = []
    anchor = folder.absolute()
    while not anchor.exists():
        missing.append(anchor)
        if anchor.parent == anchor:
            break
        anchor = anchor.parent
    if anchor.exists() and not anchor.is_dir():
        raise UserError(f"{flag} {given}: {anchor} is a file, not a folder; choose another path")
    if anchor.parent == anchor:  # `/`: a new top-level folder is never made by a typo
        raise UserError(
            f"{flag} {given}: {missing[-1]} does not exist, and no folder is created at the filesystem root; "
            "create it first or choose a path under an existing folder"
        )
    if not os.access(anchor, os.W_OK):
        raise UserError(f"{flag} {given}: cannot write there ({anchor} is not writable); choose a writable folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {given}: cannot write there ({e.strerror}); choose a writable folder") from None
    print(
        f"note: created {missing[-1]}" + (f" (and {len(missing) - 1} below it)" if len(missing) > 1 else ""),
        file=sys.stderr,
    )


def config_inputs(config: str | Path | None, cfg) -> list[tuple[str | Path, str]]:
    """What a config-reading verb reads: the config file, the data files, a local base model."""
    inputs: list[tuple[str | Path, str]] = []
    if config:
        inputs.append((config, "the --config file"))
    inputs.append((cfg.data.path, "data.path"))
    if cfg.data.eval_path:
        inputs.append((cfg.data.eval_path, "data.eval_path"))
    base = cfg.model.base
    if base and ":" not in base.split("/")[0] and Path(base).exists():
        inputs.append((base, "model.base"))
    return inputs
