"""data_prep: raw JSON/JSONL/CSV/HF dataset -> validated, rendered, deduplicated train/eval splits.

Order matters: validate every row as it is read (so an error names the file and the line or
row), render prompts, deduplicate, then split *by unique prompt* and stratified by label, so
no prompt is both trained on and evaluated. An explicit ``data.eval_path`` replaces the
split; prompts it shares with the training file are dropped from training.

Rows stream from the file: only the rendered examples are kept, so a 1M-row JSONL file
(~100 MB) takes well under 2 GB (``bench/data_prep_scale.py``).

What is refused, each with one line naming the file and line/row (or the key):
- not a regular file (a FIFO, a device) for ``data.path``/``data.eval_path``; non-UTF-8 bytes;
- malformed JSON, a key twice in one object, a row that is not an object; a CSV row whose
  field count differs from its header, or a header with an empty or repeated name;
- a missing/empty field, a non-text value (a number, a boolean, a list) where text is expected,
  text over ``data.max_text_chars``;
- labels that differ only in case; one prompt with two labels; a label outside ``data.labels``;
- an eval label that never occurs in training; fewer than ``MIN_TRAIN_PER_LABEL`` training
  examples for a label or fewer than ``MIN_EVAL_ROWS`` eval rows; one-class data.
Labels lose surrounding spaces, with a warning that counts them.

Outputs (Dataset artifact): ``train.jsonl``, ``eval.jsonl`` (``prompt``, ``completion``,
``label`` and ``text``, the row's fields without the template, per line) and ``stats.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterator

from core.artifacts import write_json
from core.config import ModelConfig
from core.errors import UserError, first_line
from core.hashing import ROOT, file_hash, tree_hash
from core.io import os_reason, write_jsonl
from core.progress import Progress
from core.prompts import render, template_fields
from core.runner import StageContext
from stages.registry import DataPrepParams

log = logging.getLogger("slm")

# The smallest dataset data_prep accepts: a label needs at least 2 training examples to be
# learnt as a class rather than memorised as one string, and an eval set of 1 row can only
# score 0 % or 100 %.
MIN_TRAIN_PER_LABEL = 2
MIN_EVAL_ROWS = 2


def run(params: DataPrepParams, ctx: StageContext, dataset: Path) -> None:
    data = params.data
    tokenizer = _chat_tokenizer(params.model) if data.prompt_format == "chat_template" else None
    source, eval_source = _sources(data)
    reader = Reader(data, tokenizer)
    examples = reader.read(source, "data.path")
    evals_in = reader.read(eval_source, "data.eval_path") if eval_source else None
    if data.eval_split:  # a named split of the DatasetDict in data.path
        evals_in = reader.read(source, "data.eval_split", split=data.eval_split)

    labels = list(data.labels) if data.labels else sorted(reader.first_seen)
    reader.check_labels(labels)
    dupes = reader.duplicates
    train, evals, leaked = _split(examples, evals_in, data)
    check_sizes(train, evals, data, reader)

    write_jsonl(dataset / "train.jsonl", train)
    write_jsonl(dataset / "eval.jsonl", evals)
    stats = {
        "labels": labels,
        "rows_read": reader.rows_read,
        "duplicates_removed": dupes,
        "labels_stripped": reader.stripped,
        "text_normalized": {"fields": reader.normalized, "rule": NORMALIZATION},
        "eval_overlap_removed_from_train": leaked,
        "train": {"rows": len(train), "labels": dict(sorted(Counter(e["label"] for e in train).items()))},
        "eval": {"rows": len(evals), "labels": dict(sorted(Counter(e["label"] for e in evals).items()))},
        "prompt_format": data.prompt_format,
        # Keyed by the config key, not the path: the same data at another path is the same dataset.
        "input_hashes": {
            key: tree_hash(p) if p.is_dir() else file_hash(p)
            for key, p in (("data.path", source), ("data.eval_path", eval_source))
            if p is not None
        },
    }
    write_json(dataset / "stats.json", stats)
    log.info("train %d, eval %d, %d duplicates removed, labels %s", len(train), len(evals), dupes, labels)
    publish_change(ctx, dataset, data.promoted_dataset_hash)


def _chat_tokenizer(model: ModelConfig):
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    if not tokenizer.chat_template:
        raise UserError(f"{model.base} has no chat template; use data.prompt_format: template")
    return tokenizer


def _sources(data) -> tuple[Path, Path | None]:
    """data.path and data.eval_path as found files; the same file twice is refused."""
    source = find_input(data.path, "data.path")
    eval_source = None
    if data.eval_path:
        eval_source = find_input(data.eval_path, "data.eval_path")
        if source.resolve() == eval_source.resolve():
            raise UserError(
                f"data.eval_path is the same file as data.path ({data.path}): every eval prompt would be removed "
                "from training; give a separate eval file, or unset data.eval_path to split data.path by "
                "data.eval_fraction"
            )
    return source, eval_source


def _split(examples: list[dict], evals_in: list[dict] | None, data) -> tuple[list, list, int]:
    """(train, eval, train rows removed because their prompt is in the eval set): a stratified split
    of data.path, or data.path minus the given eval set's prompts."""
    if evals_in is None:
        train, evals = stratified_split(examples, data.eval_fraction, data.seed)
        return train, evals, 0
    eval_prompts = {e["prompt"] for e in evals_in}
    train = [e for e in examples if e["prompt"] not in eval_prompts]
    if not train:
        raise UserError(
            f"every prompt of data.path ({data.path}) also occurs in data.eval_path ({data.eval_path}); "
            "nothing is left to train on"
        )
    return train, evals_in, len(examples) - len(train)


def publish_change(ctx: StageContext, dataset: Path, promoted: str | None) -> None:
    """Output parameters: the dataset's content hash (what its seal will say) and whether it
    differs from the promoted model's. The DAG runs train and the rest only when it does."""
    content_hash = tree_hash(dataset)
    changed = promoted != content_hash
    ctx.output_parameters.update(dataset_hash=content_hash, changed="true" if changed else "false")
    if not promoted:
        log.info("dataset %s; no promoted dataset hash given: the pipeline trains", content_hash[:12])
    elif changed:
        log.info(
            "dataset %s differs from the promoted model's %s: the pipeline trains", content_hash[:12], promoted[:12]
        )
    else:
        log.info(
            "dataset %s is the promoted model's: nothing new to train on, the pipeline stops here", content_hash[:12]
        )


NORMALIZATION = "Unicode NFC, CRLF and CR as LF, NUL and other control characters but tab and newline removed"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """The one text normalization, whatever the file format (NORMALIZATION says what it does)."""
    if text.isascii() and text.isprintable():
        return text  # the common case
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _CONTROL.sub("", text)


def find_input(path: str, key: str) -> Path:
    """Relative paths resolve against the working directory, then the project (the image's /app)."""
    for candidate in (Path(path), ROOT / path):
        if candidate.exists():
            if not (candidate.is_file() or candidate.is_dir()):
                raise UserError(
                    f"{key}: {candidate} is not a regular file (a FIFO, socket or device); "
                    "give a data file or a dataset folder"
                )
            return candidate
    for candidate in (Path(path), ROOT / path):
        if candidate.is_symlink():  # a loop or a dangling link is not "not found"
            try:
                os.stat(candidate)
            except OSError as e:
                raise UserError(f"{key}: {candidate}: {os_reason(e, candidate)}") from None
    raise UserError(f"{key}: {path} not found (looked in {Path.cwd()} and {ROOT})")


class Reader:
    """Reads rows from one or more files into examples (``prompt``, ``completion``, ``label``),
    validating each row as it streams by and dropping exact duplicates within each file."""

    def __init__(self, data, tokenizer):
        self.data, self.tokenizer = data, tokenizer
        self.template = template_fields(data.text_template) if data.prompt_format == "template" else []
        # Every field a prompt is made of must be text: the text_cols and what the template names.
        self.fields = list(dict.fromkeys([*data.text_cols, *self.template]))
        self.first_seen: dict[str, str] = {}  # label -> where it first occurs ("FILE line N")
        self.prompts: dict[str, tuple] = {}  # prompt -> (label, source index, row number), first occurrence
        self.sources: list[tuple[Path, str]] = []  # (path, "line" | "row")
        self.rows_read = 0
        self.duplicates = 0
        self.stripped = 0
        self.first_stripped = ""
        self.normalized = 0
        self.first_normalized = ""

    def read(self, path: Path, key: str, split: str | None = None) -> list[dict]:
        data, label_col, max_rows = self.data, self.data.label_col, self.data.max_rows
        examples: list[dict] = []
        unit, rows = _rows(path, data.format, split, data.eval_split)
        src = len(self.sources)
        self.sources.append((path, unit))
        here: dict[str, str] = {}  # prompt -> completion, this file: exact duplicates are dropped
        extra: set[tuple[str, str]] = set()  # a prompt with a second completion (template text after the label)
        n = count = 0
        # Silent on files read in a few seconds; a big one says how far it got every ~10 s.
        with Progress(f"data_prep {key}", unit="rows read", quiet_s=10, every_pct=None) as progress:
            for n, row in rows:
                if n % 1000 == 0:  # not every row: a million-row file stays cheap
                    progress.update(n - progress.done)
                if type(row) is not dict:
                    raise UserError(
                        f"{path} {unit} {n}: expected an object with fields {data.text_cols}, got {_json_type(row)}"
                    )
                if not self.rows_read:
                    self._check_columns(row, path)
                self._check_row(row, path, unit, n)
                self._normalize(row, path, unit, n)
                self.rows_read += 1
                label = row[label_col]
                if label != label.strip():
                    self.stripped += 1
                    self.first_stripped = self.first_stripped or f"{path} {unit} {n}: {label!r}"
                    row[label_col] = label = label.strip()
                if label not in self.first_seen:
                    self.first_seen[label] = f"{path} {unit} {n}"
                prompt, completion = render(row, data, self.tokenizer)
                seen = self.prompts.setdefault(prompt, (label, src, n))
                if seen[0] != label:
                    raise UserError(
                        f"{path} {unit} {n}: this prompt has label {label!r}, but {self.where(prompt)} "
                        f"gives it {seen[0]!r}; one prompt must have one label"
                    )
                count += 1
                previous = here.get(prompt)
                if previous is not None and (previous == completion or (prompt, completion) in extra):
                    self.duplicates += 1
                else:
                    if previous is None:
                        here[prompt] = completion
                    else:
                        extra.add((prompt, completion))
                    # text: the row's own words (no template), what evaluate's report shows
                    text = "\n".join(str(row[c]) for c in self.fields if c != label_col)
                    examples.append({"prompt": prompt, "completion": completion, "label": label, "text": text})
                if max_rows and count >= max_rows:  # data.max_rows counts rows read, duplicates included
                    break
            progress.done = n
        if not n:
            raise UserError(f"{path} has no rows")
        return examples

    def where(self, prompt: str) -> str:
        """Where a prompt first occurs: "FILE line N"."""
        _, src, n = self.prompts[prompt]
        path, unit = self.sources[src]
        return f"{path} {unit} {n}"

    def _check_columns(self, row: dict, path: Path) -> None:
        """The first row names the columns: a template field outside text_cols that it lacks is a config error."""
        lacking = [f for f in self.template if f not in row and f not in self.data.text_cols]
        if lacking:
            raise UserError(
                f"data.text_template names column(s) {lacking} that the data lacks; "
                f"{path} has columns {sorted(map(str, row))}"
            )

    def _check_row(self, row: dict, path: Path, unit: str, n: int) -> None:
        data = self.data
        limit = data.max_text_chars
        for col in self.fields:
            value = row.get(col)
            if type(value) is str and value and len(value) <= limit and not value.isspace():
                continue  # the common case, decided without building any message
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UserError(f"{path} {unit} {n}: field {col!r} is missing or empty")
            if not isinstance(value, str):
                shown = f" {json.dumps(value)}" if isinstance(value, (bool, int, float)) else ""
                raise UserError(
                    f"{path} {unit} {n}: field {col!r} must be text, got {_json_type(value)}{shown}; "
                    "quote it in the file if it is meant as text"
                )
            if len(value) > data.max_text_chars:
                raise UserError(
                    f"{path} {unit} {n}: field {col!r} has {len(value)} characters, "
                    f"over data.max_text_chars={data.max_text_chars}"
                )

    def _normalize(self, row: dict, path: Path, unit: str, n: int) -> None:
        """Every format's text the same way (normalize_text); a field left empty is refused."""
        for col in (*self.fields, self.data.label_col):
            value = row.get(col)
            if type(value) is not str:
                continue  # the label's type is checked with the labels
            clean = normalize_text(value)
            if clean == value:
                continue
            if not clean.strip():
                raise UserError(f"{path} {unit} {n}: field {col!r} holds only control characters")
            row[col] = clean
            self.normalized += 1
            self.first_normalized = self.first_normalized or f"{path} {unit} {n}"

    def check_labels(self, labels: list[str]) -> None:
        if self.normalized:
            log.warning(
                "normalized %d field(s) (%s; first at %s)", self.normalized, NORMALIZATION, self.first_normalized
            )
        if self.stripped:
            log.warning("removed surrounding spaces from %d label(s) (first at %s)", self.stripped, self.first_stripped)
        allowed = set(labels)
        by_fold: dict[str, str] = {}
        for label, at in self.first_seen.items():
            other = by_fold.setdefault(label.casefold(), label)
            if other != label:
                raise UserError(
                    f"{at}: label {label!r} differs only in case from {other!r} "
                    f"({self.first_seen[other]}); labels are case-sensitive: spell them one way"
                )
            if label not in allowed:
                hint = next(
                    (f" (labels are case-sensitive: {a!r}?)" for a in labels if a.casefold() == label.casefold()), ""
                )
                raise UserError(f"{at}: label {label!r} is not in data.labels {labels}{hint}")
        if len(self.first_seen) < 2:
            raise UserError(f"the data has only one label ({sorted(self.first_seen)}); a classifier needs at least two")


def check_sizes(train: list[dict], evals: list[dict], data, reader: Reader) -> None:
    """The minimum dataset (MIN_TRAIN_PER_LABEL, MIN_EVAL_ROWS), and no eval label unseen in training."""
    trained = Counter(e["label"] for e in train)
    for e in evals:
        if e["label"] not in trained:
            raise UserError(
                f"{reader.where(e['prompt'])}: eval label {e['label']!r} never occurs in the training data "
                f"({data.path}); the model could never predict it"
            )
    for label, count in sorted(trained.items()):
        if count < MIN_TRAIN_PER_LABEL:
            raise UserError(
                f"label {label!r} has {count} training example(s) after the split (first at "
                f"{reader.first_seen[label]}); "
                f"data_prep needs at least {MIN_TRAIN_PER_LABEL} per label: add rows for it"
            )
    if len(evals) < MIN_EVAL_ROWS:
        fix = "add rows to data.eval_path" if data.eval_path else "add data or raise data.eval_fraction"
        raise UserError(f"the eval set has {len(evals)} row(s); data_prep needs at least {MIN_EVAL_ROWS}: {fix}")


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


# --- Reading rows ------------------------------------------------------------------------------


# Formats told by their first bytes, whatever the file is called.
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"PAR1": "parquet",
    b"PK\x03\x04": "a zip archive",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ\x00": "an xz archive",
    b"\x28\xb5\x2f\xfd": "a zstd archive",
    b"ARROW1": "an Arrow IPC file",
    b"SQLite format 3\x00": "an SQLite database",
    b"\x7fELF": "an executable (ELF)",
}
TEXT_FORMATS = ("json", "jsonl", "csv")
FORMATS_HINT = "JSON, JSON Lines or CSV (each optionally .gz), Parquet, or a folder saved with save_to_disk"


def _magic(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(16)
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


def _text_format(name: str) -> str:
    """The text format a file name says (``x.jsonl.gz`` -> jsonl); JSON or JSON Lines by default."""
    suffixes = [s.lower() for s in Path(name).suffixes if s.lower() != ".gz"]
    return {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffixes[-1] if suffixes else "", "json")


def _rows(
    path: Path, fmt: str, split: str | None = None, eval_split: str | None = None
) -> tuple[str, Iterator[tuple[int, object]]]:
    """``(unit, iterator of (number, row))``: unit is "line" (JSONL, CSV) or "row" (JSON array,
    Parquet, HF). The format is decided here, once: by content first (gzip, Parquet and the
    archive formats have magic bytes), then by suffix; a format we cannot read is named."""
    if path.is_dir():
        if fmt not in ("auto", "hf_disk"):
            raise UserError(f"{path} is a folder, but data.format is {fmt!r}; a folder is read as hf_disk")
        return "row", enumerate(_load_hf_disk(path, split, eval_split), 1)
    if fmt == "hf_disk":
        raise UserError(f"{path} is a file, but data.format is hf_disk (a folder saved with save_to_disk)")
    if split:
        raise UserError(f"data.eval_split {split!r}: {path} is a file, not a saved DatasetDict; unset data.eval_split")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    magic = _magic(path)
    if magic == "parquet" or fmt == "parquet":
        if magic != "parquet":
            raise UserError(f"{path}: data.format is parquet, but the file is not Parquet (no PAR1 header)")
        return "row", enumerate(_parquet_rows(path), 1)
    if magic not in (None, "gzip"):
        raise UserError(f"{path}: {magic}, which data_prep does not read; give {FORMATS_HINT}")
    if fmt == "auto":
        fmt = _text_format(path.name)
    if not _first_byte(path):
        raise UserError(f"{path} is empty")
    if fmt == "csv":
        return "line", _csv_rows(path)
    first = _first_byte(path)
    if fmt == "json" and first == b"[":
        return "row", enumerate(_json_array(path), 1)
    if first == b"{":
        rows = _json_object_rows(path)
        if rows is not None:
            return "row", enumerate(rows, 1)
    return "line", _jsonl_rows(path)  # the bundled "dataset-classification.json" is JSONL despite its name


def _json_object_rows(path: Path) -> list | None:
    """A file that is one JSON object holding the rows in its only field (``{"rows": [...]}``), as
    a list; None when the file is JSON Lines (its first line is a whole object: a row)."""
    first = next(line for _, line in _lines(path) if line.strip())
    try:
        obj = _DECODE(first)
    except ValueError:  # the object spans lines: one document, not JSON Lines
        obj = _loads("".join(line for _, line in _lines(path)), str(path), whole_file=True)
        if not _holds_rows(obj):
            _not_rows(path, obj)
    return obj[next(iter(obj))] if _holds_rows(obj) else None


def _holds_rows(obj) -> bool:
    return isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list)


def _not_rows(path: Path, obj) -> list:
    keys = list(obj)[:8] if isinstance(obj, dict) else []
    raise UserError(
        f"{path}: one JSON object with fields {keys}, not rows; give a list of objects, JSON Lines, or an object "
        "whose only field is the list of rows"
    )


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable Parquet file ({first_line(e)})") from None


def _open(path: Path):
    """The file's bytes, gunzipped when it is gzip (by its magic bytes, whatever its name)."""
    import gzip

    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb")
    f.seek(0)
    return f


def _first_byte(path: Path) -> bytes:
    """The first byte that is not whitespace or a UTF-8 byte-order mark."""
    with _open(path) as f:
        try:
            while chunk := f.read(1 << 16):
                stripped = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
                if stripped:
                    return stripped[:1]
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: a damaged gzip file ({first_line(e)})") from None
    return b""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Decoded lines split on ``\\n`` only, numbered from 1. U+2028, U+0085 and the other Unicode
    line separators are characters like any other here, as they are inside a JSON string."""
    with _open(path) as f:
        for n, raw in enumerate(_binary_lines(f, path), 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path} line {n}: not UTF-8 text (byte {raw[e.start]:#x} at column {e.start + 1}); "
                    "re-save the file as UTF-8"
                ) from None


def _binary_lines(f, path: Path) -> Iterator[bytes]:
    try:
        yield from f
    except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream
        raise UserError(f"{path}: a damaged gzip file ({first_line(e)})") from None


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


_DECODE = json.JSONDecoder(
    object_pairs_hook=_no_duplicate_keys
).decode  # one decoder: json.loads(**kw) builds one per call


def _loads(text: str, where: str, whole_file: bool = False):
    """One JSON document; an error names ``where`` and the line (a whole file) or column (a line)."""
    try:
        return _DECODE(text)
    except _DuplicateKey as e:
        raise UserError(f"{where}: key {e.args[0]!r} appears twice in one object; keep one") from None
    except json.JSONDecodeError as e:
        at = (
            f"{where} line {e.lineno}: not valid JSON ({e.msg})"
            if whole_file
            else f"{where}: not valid JSON ({e.msg} at column {e.colno})"
        )
        raise UserError(at) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    for n, line in _lines(path):
        if line.strip():
            yield n, _loads(line, f"{path} line {n}")


def _json_array(path: Path) -> list:
    return _loads("".join(line for _, line in _lines(path)), str(path), whole_file=True)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """CSV with a header row. Quoted fields keep their newlines; a row must have the header's width."""
    lines = _lines(path)
    reader = csv.reader(line for _, line in lines)
    header = None
    try:
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            if not fields or (len(fields) == 1 and not fields[0].strip() and header is not None):
                continue  # a blank line
            if header is None:
                header = [h.strip() for h in fields]
                for i, name in enumerate(header, 1):
                    if not name:
                        raise UserError(f"{path} line {start}: header column {i} has no name; name every column")
                repeated = sorted({h for h in header if header.count(h) > 1})
                if repeated:
                    raise UserError(f"{path} line {start}: header names {repeated} more than once")
                continue
            if len(fields) != len(header):
                raise UserError(
                    f"{path} line {start}: {len(fields)} field(s), but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that contain a comma"
                )
            yield start, dict(zip(header, fields))
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None
    if header is None:
        raise UserError(f"{path} is empty")


def _load_hf_disk(path: Path, split: str | None = None, eval_split: str | None = None) -> list[dict]:
    """A saved Dataset, or a split of a saved DatasetDict: ``train`` (``split``: the eval split that
    data.eval_split names). Any other layout is refused with the splits it has; never a guess."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: not a dataset saved with datasets.save_to_disk ({type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        want = split or "train"
        if want not in ds:
            key = "data.eval_split" if split else "data.path"
            raise UserError(
                f"{key}: {path} is a DatasetDict with splits {splits} and no {want!r}; "
                + (
                    "name one of them in data.eval_split"
                    if split
                    else "save the training rows as a 'train' split (data.eval_split can name an eval split)"
                )
            )
        unused = [s for s in splits if s not in ("train", eval_split)]
        if not split and unused:
            log.warning("%s: reading split 'train'; not read: %s (data.eval_split can name one)", path, unused)
        ds = ds[want]
    elif split:
        raise UserError(f"data.eval_split {split!r}: {path} is a single Dataset, not a DatasetDict with splits")
    rows = ds.to_list()
    # A ClassLabel column holds ints: give the rows its names, which is what the model learns.
    classes = {n: f for n, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    for row in rows:
        for name, feature in classes.items():
            if isinstance(row.get(name), int) and row[name] >= 0:
                row[name] = feature.int2str(row[name])
    return rows


def stratified_split(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by unique prompt, per label, seeded: the same prompt never lands on both sides."""
    by_label: dict[str, list[str]] = {}
    seen: set[str] = set()
    for e in examples:  # each unique prompt once, under its label (one prompt has one label)
        if e["prompt"] not in seen:
            seen.add(e["prompt"])
            by_label.setdefault(e["label"], []).append(e["prompt"])
    del seen
    rng = random.Random(seed)
    eval_prompts: set[str] = set()
    for label in sorted(by_label):
        prompts = sorted(by_label[label])
        rng.shuffle(prompts)
        k = round(len(prompts) * fraction)
        if len(prompts) >= 2:
            k = min(max(k, 1), len(prompts) - 1)
        eval_prompts.update(prompts[:k])
    train = [e for e in examples if e["prompt"] not in eval_prompts]
    evals = [e for e in examples if e["prompt"] in eval_prompts]
    return train, evals
