"""Small file helpers shared by stages."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps(**kw) builds one per row
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(encode(row) + "\n")


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what}: {path} is missing") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what}: {path} is not valid JSON ({e})") from None
