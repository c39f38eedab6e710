"""A stage's cache key: the same on the runner's side (is there a sealed output to reuse?) and
in the stage (the key it seals its outputs with), so neither imports the other."""

from __future__ import annotations

from pathlib import Path

from core.hashing import ROOT, code_hash, digest, file_hash, tree_hash


def source_fingerprint(value) -> str | None:
    """What a path-like parameter points at, by content: so an in-place edit is a cache miss."""
    if value is None:
        return None
    from core.models import builtin_fingerprint

    builtin = builtin_fingerprint(value)
    if builtin:
        return builtin
    for path in (Path(value), ROOT / value):  # as data_prep finds it: the working folder, then the project
        if path.is_file():
            return file_hash(path)
        if path.is_dir():
            return tree_hash(path)
    return f"name:{value}"  # a hub id (or nothing there: the stage says so): the revision param covers its version


def cache_key(spec, params: dict, input_hashes: dict[str, str]) -> str:
    """Code + parameters + input contents. A parameter naming a local file or folder enters by
    content (and its suffix, which picks the reader), never by path: the same data moved
    elsewhere keeps its key, and an in-place edit changes it."""
    externals = {k: source_fingerprint(params.get(k)) for k in spec.external_keys(params)}
    keyed = {
        k: {"suffix": Path(str(v)).suffix.lower()} if externals.get(k) and not externals[k].startswith("name:") else v
        for k, v in params.items()
    }
    return digest(
        {
            "stage": spec.name,
            "code": code_hash(spec.name),
            "params": keyed,
            "inputs": input_hashes,
            "external": externals,
        }
    )
