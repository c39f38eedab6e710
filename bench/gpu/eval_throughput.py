#!/usr/bin/env python
"""INT4 decode throughput: raw onnxruntime-genai vs the evaluate stage's batched generator.

On one built model (onnx_build's output) and the same prompts, at each batch size:

- ``raw``: the plain onnxruntime-genai loop (encode_batch, GeneratorParams, Generator,
  append_tokens, generate_next_token ``max_new`` times), tokens/s = rows x max_new / seconds;
- ``stage``: ``stages.evaluate.stage.OnnxGenerator`` driven by ``timed_batches``, exactly as the
  evaluate stage does; tokens/s counts the same positions (rows x decoding steps).

Also the seconds for all rows (``--rows``, tone prompts repeated as needed).

    python bench/gpu/eval_throughput.py --model RUN/onnx_build/onnx_model --rows 350 --batches 1,8,32 --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def prompts_for(rows: int) -> list[str]:
    from core.config import Config
    from core.io import read_jsonl
    from core.prompts import render

    cfg = Config()  # the default data section on data/tone.jsonl, with the production Phi-3 template
    cfg.data.prompt_format = "template"
    base = [render(r, cfg.data)[0] for r in read_jsonl(ROOT / "data" / "tone.jsonl")]
    return [base[i % len(base)] for i in range(rows)]


def raw_loop(og, model, tokenizer, prompts: list[str], batch: int, max_new: int) -> tuple[float, int]:
    steps_total, start = 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        tokens = tokenizer.encode_batch(chunk)
        params = og.GeneratorParams(model)
        width = tokens.as_numpy().shape[1]
        params.set_search_options(max_length=width + max_new, batch_size=len(chunk), do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(tokens)
        for _ in range(max_new):
            if gen.is_done():
                break
            gen.generate_next_token()
            steps_total += len(chunk)
    return time.perf_counter() - start, steps_total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=350)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--max-new", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2, help="timed repeats (best kept)")
    ap.add_argument("--out", default=".")
    args = ap.parse_args()

    import onnxruntime_genai as og

    from core.generators import OnnxGenerator, timed_batches

    prompts = prompts_for(args.rows)
    stage_gen = OnnxGenerator(Path(args.model), args.max_new)
    model, tokenizer = stage_gen.model, stage_gen.tokenizer
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        n = len(prompts) if batch > 1 else min(len(prompts), 64)  # batch 1: a sample (per-row latency bound)
        sample = prompts[:n]
        raw_loop(og, model, tokenizer, sample[: batch * 2], batch, args.max_new)  # warm-up
        best_raw = min(
            (raw_loop(og, model, tokenizer, sample, batch, args.max_new) for _ in range(args.repeat)),
            key=lambda r: r[0],
        )
        stage_gen.generate(sample[:batch])
        best_stage = None
        for _ in range(args.repeat):
            stage_gen.generated_tokens, stage_gen.decode_positions = 0, 0
            texts, speed = timed_batches(stage_gen, sample, batch)
            if best_stage is None or speed["seconds"] < best_stage[0]:
                best_stage = (speed["seconds"], stage_gen.decode_positions, speed)
        raw_tps = best_raw[1] / best_raw[0]
        st_tps = best_stage[1] / best_stage[0]
        row = {
            "batch": batch,
            "rows": n,
            "raw_s": round(best_raw[0], 3),
            "raw_tokens_per_s": round(raw_tps, 1),
            "stage_s": round(best_stage[0], 3),
            "stage_tokens_per_s": round(st_tps, 1),
            "stage_over_raw": round(st_tps / raw_tps, 3),
            "stage_tokens_per_s_until_eos": best_stage[2]["tokens_per_second"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"onnxruntime_genai": og.__version__, "model": args.model, "max_new": args.max_new}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        pass
    (out / "eval_throughput.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
