#!/usr/bin/env python
"""INT4 vs PyTorch latency you can trust: the same prompts, decoding and label parser as the
evaluate stage (its generators), warm, threads pinned, the median of several passes, the models
interleaved pass by pass so a noisy neighbour hits both. Prints ratios (INT4 / PyTorch).

    taskset -c 0,1 .venv/bin/python bench/int4_latency.py --run runs/default --threads 2 \\
        [--onnx runs/default/tune-int4/model] [--also runs/default/onnx_build/onnx_model] [--json out.json]

Models: PyTorch fp32 (the run's merged model; ``--bf16`` adds bf16), the INT4 model (default:
RUN/tune-int4/model, the search's choice, else RUN/onnx_build/onnx_model) and any ``--also``.
``--profile`` adds where INT4's time goes at batch 1 and at the batch: tokenization, generator
set-up, prefill (append_tokens), the decode loop, detokenization (perf_counter around each call),
and with ``--ort-profile`` onnxruntime's per-operator profile of one batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def passes(gen, prompts, batch, latency_prompts):
    """One pass: tokens/s over every prompt at ``batch``, and batch-1 latencies; plus the texts."""
    from core.generators import timed, timed_batches

    gen.generated_tokens = 0
    texts, speed = timed_batches(gen, prompts, batch)
    lat = [timed(gen, [p])[1] for p in prompts[:latency_prompts]]
    return texts, speed["tokens_per_second"], len(prompts) / max(speed["seconds"], 1e-9), lat


def profile_onnx(gen, prompts, batch, ort_profile: bool) -> dict:
    """Seconds per phase of OnnxGenerator.generate, summed over the prompts, at batch 1 and ``batch``."""
    og = gen.og
    out = {}
    for b in (1, batch):
        phases = dict(tokenize=0.0, setup=0.0, prefill=0.0, decode=0.0, detokenize=0.0)
        steps = 0
        chunk = prompts[: max(b * 4, 8)] if b == 1 else prompts
        for i in range(0, len(chunk), b):
            ps = chunk[i : i + b]
            t0 = time.perf_counter()
            tokens = gen.tokenizer.encode_batch(ps)
            t1 = time.perf_counter()
            params = og.GeneratorParams(gen.model)
            width = tokens.as_numpy().shape[1]
            params.set_search_options(max_length=width + gen.max_new_tokens, batch_size=len(ps), do_sample=False)
            g = og.Generator(gen.model, params)
            t2 = time.perf_counter()
            g.append_tokens(tokens)
            t3 = time.perf_counter()
            n = 0
            while not g.is_done() and n < gen.max_new_tokens:
                g.generate_next_token()
                n += 1
            t4 = time.perf_counter()
            for j in range(len(ps)):
                gen.tokenizer.decode(g.get_sequence(j)[width:].tolist())
            t5 = time.perf_counter()
            steps += n
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                phases[k] += dt
        total = sum(phases.values())
        out[f"batch {b}"] = {
            "calls": (len(chunk) + b - 1) // b,
            "decode_steps": steps,
            **{k: f"{v * 1000:.0f} ms ({100 * v / total:.0f} %)" for k, v in phases.items()},
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a finished run folder")
    ap.add_argument("--onnx", type=Path, help="the INT4 model (default: RUN/tune-int4/model, else onnx_build's)")
    ap.add_argument("--also", type=Path, action="append", default=[], help="another ONNX model to time")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    ap.add_argument("--batch", type=int, default=16, help="the evaluate batch")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--latency-prompts", type=int, default=20)
    ap.add_argument("--rows", type=int, default=None, help="first N eval rows (default: all)")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--bf16", action="store_true", help="also PyTorch bf16")
    ap.add_argument("--profile", action="store_true", help="INT4's time per phase (see above)")
    ap.add_argument("--ort-profile", action="store_true", help="with --profile: onnxruntime's per-operator profile")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()

    import torch

    from core.generators import OnnxGenerator, TorchGenerator
    from core.io import read_json, read_jsonl
    from core.prompts import parse_label
    from core.scoring import classification_report

    torch.set_num_threads(args.threads)
    dataset, merged = args.run / "data_prep" / "dataset", args.run / "merge" / "model"
    labels = read_json(dataset / "stats.json", "dataset")["labels"]
    rows = read_jsonl(dataset / "eval.jsonl")[: args.rows]
    prompts, truth = [r["prompt"] for r in rows], [r["label"] for r in rows]
    onnx = args.onnx or next(
        (p for p in (args.run / "tune-int4" / "model", args.run / "onnx_build" / "onnx_model") if p.is_dir()), None
    )
    if onnx is None:
        raise SystemExit(f"no ONNX model under {args.run}; pass --onnx")
    models = {"pytorch fp32": TorchGenerator(merged, "cpu", args.max_new_tokens)}
    if args.bf16:
        bf = TorchGenerator(merged, "cpu", args.max_new_tokens)
        bf.model = bf.model.to(torch.bfloat16)
        models["pytorch bf16"] = bf
    for path in (onnx, *args.also):
        name = f"int4 {path.parent.name}/{path.name}" if path != onnx else "int4 (chosen)"
        models[name] = OnnxGenerator(path, args.max_new_tokens, threads=args.threads)
    for gen in models.values():  # warm: weights paged in, kernels and allocators set up
        gen.generate(prompts[: args.batch])
        gen.generate(prompts[:1])

    found = {name: {"tps": [], "pps": [], "p50": [], "p95": []} for name in models}
    texts = {}
    load = []
    for _ in range(args.passes):
        for name, gen in models.items():  # interleaved: a busy moment lands on every model
            texts[name], tps, pps, lat = passes(gen, prompts, args.batch, args.latency_prompts)
            lat_sorted = sorted(lat)
            found[name]["tps"].append(tps)
            found[name]["pps"].append(pps)
            found[name]["p50"].append(statistics.median(lat_sorted) * 1000)
            found[name]["p95"].append(lat_sorted[max(0, round(0.95 * len(lat_sorted)) - 1)] * 1000)
        load.append(_loadavg())

    ref = "pytorch fp32"
    table = {}
    for name, f in found.items():
        acc = classification_report(truth, [parse_label(t, labels) for t in texts[name]], labels)
        table[name] = {
            "accuracy": acc["accuracy"],
            "macro_f1": acc["macro_f1"],
            "p50_ms": round(statistics.median(f["p50"]), 1),
            "p95_ms": round(statistics.median(f["p95"]), 1),
            "tokens_per_second": round(statistics.median(f["tps"]), 1),
            "prompts_per_second": round(statistics.median(f["pps"]), 2),
            "p50_ms_passes": [round(x, 1) for x in f["p50"]],
            "tokens_per_second_passes": [round(x, 1) for x in f["tps"]],
        }
    for name, t in table.items():
        t["p50_ratio"] = round(t["p50_ms"] / table[ref]["p50_ms"], 3)
        t["throughput_ratio"] = round(t["tokens_per_second"] / table[ref]["tokens_per_second"], 3)
        t["accuracy_drop"] = round(table[ref]["accuracy"] - t["accuracy"], 4)
    print(
        f"{len(prompts)} eval prompts, batch {args.batch}, {args.latency_prompts} batch-1 prompts, "
        f"{args.threads} threads, median of {args.passes} passes, load average {load}"
    )
    print(f"{'model':34} {'acc':>6} {'p50 ms':>8} {'p95 ms':>8} {'tok/s':>8} {'p50 ×':>7} {'tok/s ×':>8}")
    for name, t in table.items():
        print(
            f"{name:34} {t['accuracy']:6.3f} {t['p50_ms']:8.1f} {t['p95_ms']:8.1f} {t['tokens_per_second']:8.1f} "
            f"{t['p50_ratio']:7.2f} {t['throughput_ratio']:8.2f}"
        )
    result = {
        "rows": len(prompts),
        "batch": args.batch,
        "threads": args.threads,
        "passes": args.passes,
        "load_average": load,
        "onnx": str(onnx),
        "models": table,
    }
    if args.profile:
        gen = models["int4 (chosen)"]
        if args.ort_profile:
            import onnxruntime_genai as og

            config = og.Config(str(onnx))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"enable_profiling": "int4_ort"}}}}))
            gen.model = og.Model(config)
            gen.tokenizer = og.Tokenizer(gen.model)
        result["profile"] = profile_onnx(gen, prompts, args.batch, args.ort_profile)
        print(json.dumps(result["profile"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _loadavg():
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
