#!/usr/bin/env python
"""Save a random-init Phi-3-mini (``Phi3Config()`` defaults: 3.8 B parameters, bf16) with a tokenizer,
as a local model folder for ``model.base`` on a machine with no hub access.

The tokenizer is a byte-level BPE trained on the bundled tone set, with Phi-3's special tokens
(``<|endoftext|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>``): the real one is not on PyPI. Speed
and memory do not depend on the weights' values; accuracy is meaningless (random weights).

    python bench/gpu/make_phi3_mini.py /tmp/phi3-mini-random [--tiny] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def tone_tokenizer(vocab_size: int = 4000):
    from core.tiny_models import tokenizer

    return tokenizer(vocab_size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from train_throughput import save_random_phi3

    out = Path(args.out)
    if (out / "config.json").is_file():
        print(f"{out} exists")
        return 0
    t = time.time()
    out.mkdir(parents=True, exist_ok=True)
    save_random_phi3(out, args.tiny, args.device)
    print(f"saved {out} in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
