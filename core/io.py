"""File helpers shared by stages and verbs, and the one bounded reader of YAML and JSON.

Every YAML or JSON file a verb reads (configs, Olive files, ``validate`` inputs, summaries,
markers) goes through :func:`read_text` and :func:`load_yaml` / :func:`load_json` /
:func:`load_file`. The limits are counted by the loader itself while it builds the tree, so a
hostile file fails fast with one line, never by exhausting memory or the stack:

- regular files only (a FIFO or device is refused before a byte is read: no hang), at most
  ``MAX_BYTES``;
- nesting at most ``MAX_DEPTH`` levels;
- at most ``MAX_NODES`` values as written, and at most ``MAX_EXPANDED`` once aliases are
  expanded (an alias bomb is refused by its count, before anything is expanded);
- recursive aliases and duplicate keys are errors naming the line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Mapping

import yaml

from core.errors import UserError

MAX_BYTES = 32 << 20  # the largest compiled pipeline is ~100 KB, the largest shipped config ~5 KB
MAX_DEPTH = 64  # the deepest compiled pipeline nests ~15 levels
MAX_NODES = 200_000  # values as written
MAX_EXPANDED = 100_000  # values after expanding aliases, over what is written once


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps(**kw) builds one per row
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(encode(row) + "\n")


def read_bytes(path: str | Path, what: str = "", max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file, or a one-line UserError naming what is wrong with ``path``.
    Opened non-blocking and checked with fstat before reading: a FIFO never blocks."""
    path = Path(path)
    where = f"{what}: {path}" if what else str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UserError(f"{where}: {os_reason(e, path)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO, socket or device"
            raise UserError(f"{where}: not a regular file ({kind}); give a file")
        if st.st_size > max_bytes:
            raise UserError(f"{where}: {st.st_size:,} bytes, over the {max_bytes:,}-byte limit for this file")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                raise UserError(f"{where}: over the {max_bytes:,}-byte limit for this file")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise UserError(f"{where}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)


def os_reason(e: OSError, path: Path) -> str:
    """Why ``path`` cannot be opened, in words a user can act on."""
    if e.errno == errno.ELOOP:
        return "a symbolic link loop (or too many levels of links); point it at a real file"
    if e.errno == errno.ENOENT:
        return "not found" if not path.is_symlink() else "a symbolic link to nothing (its target does not exist)"
    if e.errno == errno.EACCES:
        return "permission denied"
    if e.errno == errno.ENOTDIR:
        return "not found (a part of the path is a file, not a folder)"
    return f"cannot open: {e.strerror}"


def read_text(path: str | Path, what: str = "", max_bytes: int = MAX_BYTES) -> str:
    """A regular file's UTF-8 text (a BOM is dropped), or a UserError naming the line of a bad byte."""
    raw = read_bytes(path, what, max_bytes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        where = f"{what}: {path}" if what else str(path)
        raise UserError(
            f"{where} line {line}: not UTF-8 text (byte {raw[e.start]:#x}); re-save the file as UTF-8"
        ) from None


# --- YAML -------------------------------------------------------------------------------------

# YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: 1e-4, 5E+3 (no dot).
_FLOAT_12 = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts, while composing: the nesting depth, the values written,
    and each node's values with its aliases expanded (computed bottom-up from its children's
    counts, so a bomb is refused by arithmetic before anything is expanded). A recursive alias
    (to a node still being composed) and a key twice in one mapping are errors by line."""

    def __init__(self, stream, where: str):
        super().__init__(stream)
        self.where = where
        self.depth = 0
        self.nodes = 0
        self.weight: dict[int, int] = {}  # id(node) -> its values, aliases expanded; absent: still open

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self.weight:
                line = event.start_mark.line + 1
                raise UserError(f"{self.where} line {line}: a recursive alias; write the value out")
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise UserError(f"{self.where} line {line}: nested more than {MAX_DEPTH} levels deep")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise UserError(f"{self.where}: more than {MAX_NODES:,} values; too large for a config or pipeline file")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        self.weight[id(node)] = 1
        return node

    def compose_sequence_node(self, anchor):
        node = super().compose_sequence_node(anchor)
        return self._weigh(node, 1 + sum(self.weight[id(item)] for item in node.value))

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        keys: dict = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    raise UserError(
                        f"{self.where} line {key.start_mark.line + 1}: key {key.value!r} appears twice "
                        f"in one mapping (also line {keys[key.value]}); keep one"
                    )
                keys[key.value] = key.start_mark.line + 1
        return self._weigh(node, 1 + sum(self.weight[id(k)] + self.weight[id(v)] for k, v in node.value))

    def _weigh(self, node, weight: int):
        if weight > self.nodes + MAX_EXPANDED:  # more than written: aliases did it
            raise UserError(
                f"{self.where} line {node.start_mark.line + 1}: its aliases expand to over {MAX_EXPANDED:,} "
                "values (an alias bomb?); write the values out"
            )
        self.weight[id(node)] = weight
        return node


BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))


class YamlSyntaxError(UserError):
    """Text that is not YAML at all (``--set`` values fall back to the plain string on it)."""


def load_yaml_docs(text: str, where: str) -> list:
    """Every document of a YAML text (empty ones dropped), through :class:`BoundedLoader`; a syntax
    error is a UserError naming the line."""
    loader = BoundedLoader(text, where)
    docs = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                docs.append(loader.construct_document(node))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlSyntaxError(f"{where}{at}: not valid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()
    return [d for d in docs if d is not None]


def load_yaml(text: str, where: str) -> Any:
    """One YAML document (None for an empty text), bounded as :class:`BoundedLoader` says."""
    docs = load_yaml_docs(text, where)
    if len(docs) > 1:
        raise UserError(f"{where}: {len(docs)} YAML documents; expected one")
    return docs[0] if docs else None


# --- JSON -------------------------------------------------------------------------------------


def _no_duplicate_keys(where: str):
    def hook(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise UserError(f"{where}: key {key!r} appears twice in one object; keep one")
            out[key] = value
        return out

    return hook


def _depth(value: Any) -> int:
    """The nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]
    return deepest


def load_json(text: str, where: str) -> Any:
    """A JSON text with the same bounds as YAML: depth, duplicate keys; errors name the line."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys(where))
    except json.JSONDecodeError as e:
        raise UserError(f"{where} line {e.lineno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    if _depth(value) > MAX_DEPTH + 1:
        raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    return value


def load_file(path: str | Path, what: str = "", max_bytes: int = MAX_BYTES, all_docs: bool = False) -> Any:
    """The one reader of a YAML or JSON file any verb reads: a regular file, bounded in size,
    depth and alias expansion. JSON by the ``.json`` suffix, else YAML (which JSON also is).
    ``all_docs``: a list of every YAML document."""
    path = Path(path)
    text = read_text(path, what, max_bytes)
    where = f"{what}: {path}" if what else str(path)
    if path.suffix.lower() == ".json":
        value = load_json(text, where)
        return [value] if all_docs else value
    return load_yaml_docs(text, where) if all_docs else load_yaml(text, where)


def read_json(path: Path, what: str) -> dict:
    """A JSON file a stage reads (a marker, stats.json, build_info.json): bounded, one-line errors."""
    if not Path(path).exists() and not Path(path).is_symlink():
        raise UserError(f"{what}: {path} is missing")
    return load_json(read_text(path, what), f"{what}: {path}")


def flat(tree: Mapping, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the leaves of nested mappings under joined keys
    (the one flattener of plain trees; core.config.flatten is the schema's, whose dict fields are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}{sep}", sep))
        else:
            out[f"{prefix}{key}"] = value
    return out
