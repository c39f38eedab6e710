#!/usr/bin/env python
"""CPU benchmarks, each printed as a ratio against a baseline measured in the same run.

1. train step: our completion-only loss (LM head on completion positions only) vs the
   plain ``model(**batch).loss`` (LM head over every position), LoRA on SmolLM2-135M.
2. generation: onnxruntime-genai INT4 vs PyTorch fp32 on the same prompts and decoding,
   from a finished run folder (default: runs/default, made by ``make run``).

    .venv/bin/python bench/run.py [--run runs/default] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_train_step(steps: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from core.io import read_jsonl
    from core.models import load_model, load_tokenizer
    from stages.train.stage import collate, completion_loss, tokenize

    torch.manual_seed(0)
    base = "embedded:smollm2-135m-instruct"
    tok = load_tokenizer(base)
    rows = [
        {
            "prompt": tok.apply_chat_template(
                [{"role": "user", "content": r["phrase"]}], tokenize=False, add_generation_prompt=True
            ),
            "completion": r["tone"] + "<|im_end|>",
        }
        for r in read_jsonl(ROOT / "data" / "tone.jsonl")[:8]
    ]
    batch = collate(tokenize(rows, tok, 256), tok, "cpu")
    model = get_peft_model(
        load_model(base), LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )

    def step(loss_fn) -> float:
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    results = {}
    for name, fn in (
        ("full LM head (baseline)", lambda: model(**batch).loss),
        ("completion-only LM head", lambda: completion_loss(model, batch)),
    ):
        step(fn)  # warm-up
        results[name] = statistics.median(step(fn) for _ in range(steps))
    a, b = results.values()
    print(f"\ntrain step, SmolLM2-135M LoRA r=16, batch 8 x {batch['input_ids'].shape[1]} tokens, median of {steps}")
    for name, t in results.items():
        print(f"  {name:<26} {t * 1000:8.1f} ms")
    print(f"  speed-up: {a / b:.2f}x")


def bench_generation(run: Path) -> None:
    from core.generators import OnnxGenerator, TorchGenerator, timed_batches
    from core.io import read_jsonl

    if not (run / "evaluate").exists():
        print(f"\ngeneration: skipped, no finished run at {run} (run `make run` first)")
        return
    prompts = [r["prompt"] for r in read_jsonl(run / "data_prep" / "dataset" / "eval.jsonl")][:64]
    rows = {}
    for name, gen in (
        ("pytorch fp32 (baseline)", TorchGenerator(run / "merge" / "model", "cpu", 8)),
        ("onnx int4", OnnxGenerator(run / "onnx_build" / "onnx_model", 8)),
    ):
        for batch in (1, 16):
            gen.generated_tokens = 0
            _, speed = timed_batches(gen, prompts if batch > 1 else prompts[:16], batch)
            rows[(name, batch)] = speed["tokens_per_second"]
    print(f"\ngeneration on {len(prompts)} eval prompts, greedy, 8 new tokens max (tokens/s)")
    for batch in (1, 16):
        base, onnx = rows[("pytorch fp32 (baseline)", batch)], rows[("onnx int4", batch)]
        print(f"  batch {batch:>2}: pytorch {base:8.1f}   onnx int4 {onnx:8.1f}   ratio {onnx / base:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    bench_train_step(args.steps)
    bench_generation(args.run)
