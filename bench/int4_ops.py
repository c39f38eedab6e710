#!/usr/bin/env python
"""Where an onnxruntime-genai model's time goes, per operator and per MatMul group, from
onnxruntime's own profiler: one batch of eval prompts, prefill plus a few decode steps, twice.

    .venv/bin/python bench/int4_ops.py --onnx runs/default/onnx_build/onnx_model \\
        --dataset runs/default/data_prep/dataset [--batch 16] [--threads 2]

The profile is written when the session ends (at interpreter exit), so the script runs the
model in a child process and reads the profile afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(onnx: str, dataset: str, batch: int, threads: int, steps: int) -> None:
    sys.path.insert(0, str(ROOT))
    import onnxruntime_genai as og

    from core.io import read_jsonl

    prompts = [r["prompt"] for r in read_jsonl(Path(dataset) / "eval.jsonl")][:batch]
    options = {"enable_profiling": "ort_profile"} | ({"intra_op_num_threads": threads} if threads else {})
    config = og.Config(onnx)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)
    for _ in range(2):
        tokens = tok.encode_batch(prompts)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=tokens.as_numpy().shape[1] + steps + 1, batch_size=len(prompts))
        gen = og.Generator(model, params)
        gen.append_tokens(tokens)
        for _ in range(steps):
            gen.generate_next_token()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3, help="decode steps after the prefill")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.onnx, args.dataset, args.batch, args.threads, args.steps)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", "--onnx", str(Path(args.onnx).resolve())]
        cmd += ["--dataset", str(Path(args.dataset).resolve()), "--batch", str(args.batch)]
        cmd += ["--threads", str(args.threads), "--steps", str(args.steps)]
        subprocess.run(cmd, cwd=tmp, check=True)
        events = json.loads(next(Path(tmp).glob("ort_profile*.json")).read_text())
    ops, groups, runs = collections.Counter(), collections.Counter(), []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            ops[op] += e["dur"]
            if op == "MatMulNBits":
                node = e["name"].removesuffix("_kernel_time")
                groups["lm_head" if "lm_head" in node else f"{node.split('/')[-2]} ({node.rsplit('_', 1)[-1]})"] += e[
                    "dur"
                ]
        elif e.get("name") == "model_run":
            runs.append(round(e["dur"] / 1000, 1))
    total = sum(ops.values())
    print(f"batch {args.batch}: model_run ms (prefill, then decode steps; twice): {runs}")
    for op, us in ops.most_common(8):
        print(f"  {op:36} {us / 1000:9.1f} ms {100 * us / total:5.1f} %")
    print("  MatMulNBits by projection (bits):")
    for g, us in groups.most_common(12):
        print(f"    {g:34} {us / 1000:9.1f} ms {100 * us / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
