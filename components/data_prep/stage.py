"""data_prep: raw JSON/JSONL/CSV/HF dataset -> validated, rendered, deduplicated train/eval splits.

Order matters: validate every row first (so an error names the row in the user's file),
render prompts, deduplicate, then split *by unique prompt* and stratified by label, so no
prompt is both trained on and evaluated. An explicit ``data.eval_path`` replaces the split;
prompts it shares with the training file are dropped from training.

Outputs (Dataset artifact): ``train.jsonl``, ``eval.jsonl`` (``prompt``, ``completion``,
``label`` per line) and ``stats.json``.
"""
from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from pathlib import Path

from components.common.artifacts import write_json
from components.common.errors import UserError
from components.common.hashing import ROOT, file_hash, tree_hash
from components.common.io import write_jsonl
from components.common.prompts import check_template, render

log = logging.getLogger("slm")


def run(cfg, context, dataset: Path) -> None:
    data = cfg.data
    tokenizer = None
    if data.prompt_format == "chat_template":
        from components.common.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.base, cfg.model.trust_remote_code)
        if not tokenizer.chat_template:
            raise UserError(f"{cfg.model.base} has no chat template; use data.prompt_format: template")

    sources = [find_input(data.path, "data.path")]
    rows = load_rows(sources[0], data)
    eval_rows = None
    if data.eval_path:
        sources.append(find_input(data.eval_path, "data.eval_path"))
        eval_rows = load_rows(sources[1], data)

    labels = data.labels or sorted({r[data.label_col] for r in rows + (eval_rows or [])})
    check_labels(rows + (eval_rows or []), data, labels)
    examples, dupes = dedupe([to_example(r, data, tokenizer) for r in rows])
    if eval_rows is None:
        train, evals = stratified_split(examples, data.eval_fraction, data.seed)
        leaked = 0
    else:
        evals, eval_dupes = dedupe([to_example(r, data, tokenizer) for r in eval_rows])
        dupes += eval_dupes
        eval_prompts = {e["prompt"] for e in evals}
        train = [e for e in examples if e["prompt"] not in eval_prompts]
        leaked = len(examples) - len(train)
    if not train or not evals:
        raise UserError(f"the split left {len(train)} training and {len(evals)} eval rows; add data or change data.eval_fraction")

    write_jsonl(dataset / "train.jsonl", train)
    write_jsonl(dataset / "eval.jsonl", evals)
    stats = {
        "labels": labels,
        "rows_read": len(rows) + len(eval_rows or []),
        "duplicates_removed": dupes,
        "eval_overlap_removed_from_train": leaked,
        "train": {"rows": len(train), "labels": dict(sorted(Counter(e["label"] for e in train).items()))},
        "eval": {"rows": len(evals), "labels": dict(sorted(Counter(e["label"] for e in evals).items()))},
        "prompt_format": data.prompt_format,
        "input_hashes": {str(p): tree_hash(p) if p.is_dir() else file_hash(p) for p in sources},
    }
    write_json(dataset / "stats.json", stats)
    log.info("train %d, eval %d, %d duplicates removed, labels %s", len(train), len(evals), dupes, labels)


def find_input(path: str, key: str) -> Path:
    """Relative paths resolve against the working directory, then the project (the image's /app)."""
    for candidate in (Path(path), ROOT / path):
        if candidate.exists():
            return candidate
    raise UserError(f"{key}: {path} not found (looked in {Path.cwd()} and {ROOT})")


def load_rows(path: Path, data) -> list[dict]:
    fmt = data.format
    if fmt == "auto":
        fmt = "hf_disk" if path.is_dir() else {".csv": "csv", ".jsonl": "jsonl"}.get(path.suffix, "json")
    if fmt == "hf_disk":
        rows = _load_hf_disk(path)
    else:
        text = _read_text(path)
        if not text.strip():
            raise UserError(f"{path} is empty")
        if fmt == "csv":
            rows = list(csv.DictReader(text.splitlines()))
        elif fmt == "json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON: {e}") from None
        else:  # JSON Lines (the bundled "dataset-classification.json" is JSONL despite its name)
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    if data.max_rows:
        rows = rows[: data.max_rows]
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path} row {n}: expected an object with fields {data.text_cols}, got {type(row).__name__}")
    if not rows:
        raise UserError(f"{path} has no rows")
    columns = set().union(*(r.keys() for r in rows))
    if data.prompt_format == "template":
        check_template(data.text_template, columns)
    for n, row in enumerate(rows, 1):
        for col in data.text_cols:
            value = row.get(col)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UserError(f"{path} row {n}: field {col!r} is missing or empty")
            if not isinstance(value, (str, int, float)):
                raise UserError(f"{path} row {n}: field {col!r} must be text, got {type(value).__name__}")
            if len(str(value)) > data.max_text_chars:
                raise UserError(f"{path} row {n}: field {col!r} has {len(str(value))} characters, over data.max_text_chars={data.max_text_chars}")
        row[data.label_col] = str(row[data.label_col]).strip()
        row["_row"] = n
    return rows


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: not UTF-8 text (byte {raw[e.start]:#x} at offset {e.start}); re-save the file as UTF-8") from None


def _load_hf_disk(path: Path) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: not a dataset saved with datasets.save_to_disk ({type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return ds.to_list()


def check_labels(rows: list[dict], data, labels: list[str]) -> None:
    allowed = set(labels)
    for row in rows:
        if row[data.label_col] not in allowed:
            raise UserError(f"row {row['_row']}: label {row[data.label_col]!r} is not in data.labels {labels}")
    present = {r[data.label_col] for r in rows}
    if len(present) < 2:
        raise UserError(f"the data has only one label ({sorted(present)}); a classifier needs at least two")


def to_example(row: dict, data, tokenizer) -> dict:
    prompt, completion = render(row, data, tokenizer)
    return {"prompt": prompt, "completion": completion, "label": row[data.label_col]}


def dedupe(examples: list[dict]) -> tuple[list[dict], int]:
    seen, out = set(), []
    for e in examples:
        key = (e["prompt"], e["completion"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out, len(examples) - len(out)


def stratified_split(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by unique prompt, per label, seeded: the same prompt never lands on both sides."""
    by_prompt: dict[str, list[dict]] = {}
    for e in examples:
        by_prompt.setdefault(e["prompt"], []).append(e)
    by_label: dict[str, list[str]] = {}
    for prompt, group in by_prompt.items():
        by_label.setdefault(group[0]["label"], []).append(prompt)
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
