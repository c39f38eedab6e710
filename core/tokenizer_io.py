"""Writing a tokenizer as every consumer of ours reads it (its own module: models.py and
tiny_models.py both write tokenizers, and models.py imports tiny_models)."""

from __future__ import annotations

import json
from pathlib import Path


def save_tokenizer(tok, out: Path) -> None:
    """Save as ``PreTrainedTokenizerFast``: loadable by transformers 4.x, 5.x and onnxruntime-genai."""
    tok.save_pretrained(out)
    cfg_path = Path(out) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))
