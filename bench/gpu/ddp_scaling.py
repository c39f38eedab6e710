#!/usr/bin/env python
"""Data-parallel scaling of the train stage: the same job on 1 and on N GPUs.

Runs data_prep once, then the train stage's real command line (``python -m stages.train``)
with ``train.gpus=1`` and ``train.gpus=N`` for each workload, and reports the stage's own
tokens/s (training loop only, model load excluded), the scaling and the loss curves (same
effective batch and seed: they should agree within bf16/atomics noise).

Workloads: ``tone`` = the production config as is (batch 4 x grad_accum 4 tone examples a step,
~0.4k tokens: small steps); ``packed`` = ``train.packing=true`` (Olive join into 1,024-token
blocks): 16 blocks = 16k tokens a step (compute-bound).

Besides the stage's own figure (whole loop: first step's warm-up and the last step's checkpoint
included), each run's log lines are time-stamped as they arrive, and ``steady_tokens_per_second``
is the rate between the ``--skip``-th and the last step's log line (warm-up and the final
checkpoint excluded). Each run's log is kept as ``OUT/NAME.log.gz``.

    python bench/gpu/ddp_scaling.py --model /tmp/phi3-mini --gpus 2 --steps 30 --out OUT
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

WORKLOADS = {"tone": [], "packed": ["train.packing=true"]}
STEP_LINE = re.compile(r"step (\d+)/(\d+) loss")


def timed_stage(name: str, cfg, inputs: dict, outputs: dict, log_path: Path) -> tuple[float, dict[int, float]]:
    """Run a stage's real command line; each output line is time-stamped on arrival (gzip log) and
    the arrival time of each ``step k/N`` line is returned."""
    from stages.registry import STAGES

    spec = STAGES[name]
    argv = spec.argv(spec.params(cfg), inputs, outputs)
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, *argv[1:]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    steps, tail = {}, []
    with gzip.open(log_path, "wt") as log:
        for line in proc.stdout:
            now = time.time()
            log.write(f"{now - t0:8.3f} {line}")
            m = STEP_LINE.search(line)
            if m:
                steps[int(m.group(1))] = now
            tail = (tail + [line])[-40:]
    if proc.wait():
        raise SystemExit(f"{name} failed ({proc.returncode}): {''.join(tail)[-3000:]}")
    return time.time() - t0, steps


def main() -> int:
    from loss_curve import stage

    from core.config import Config, load_config  # noqa: F401

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/phi3-mini.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workloads", default="tone,packed")
    ap.add_argument("--only", choices=["1", "n", "both"], default="both")
    ap.add_argument("--skip", type=int, default=3, help="steady rate from this step's log line to the last")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    base = [
        f"model.base={args.model}",
        f"train.max_steps={args.steps}",
        "train.log_every=1",
        f"train.checkpoint_every={args.steps}",
        "runtime.device=cuda",
    ] + args.set
    work = Path(tempfile.mkdtemp(prefix="ddp-"))
    cfg = load_config(ROOT / args.config, base)
    stage("data_prep", cfg, {}, {"dataset": str(work / "dataset")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / f"ddp_scaling_{args.only}.json"
    results = {}
    counts = {"1": [1], "n": [args.gpus], "both": [1, args.gpus]}[args.only]
    for w in args.workloads.split(","):
        for n in counts:
            name = f"{w}-{n}gpu"
            vcfg = load_config(ROOT / args.config, base + WORKLOADS[w] + [f"train.gpus={n}"])
            wall, times = timed_stage(
                "train", vcfg, {"dataset": str(work / "dataset")}, {"adapter": str(work / name)}, out / f"{name}.log.gz"
            )
            m = json.loads((work / name / "metrics.json").read_text())
            log = [json.loads(line)["loss"] for line in (work / name / "train_log.jsonl").read_text().splitlines()]
            results[name] = {
                "wall_s": round(wall, 1),
                "tokens_per_second": m["tokens_per_second"],
                "seconds_loop": m["seconds_this_run"],
                "tokens": m["tokens_this_run"],
                "train_sequences": m.get("train_sequences"),
                "peak_gpu_memory_gib": m.get("peak_gpu_memory_gib"),
                "losses": log,
            }
            last = max(times, default=0)
            if args.skip in times and last > args.skip:
                per_step = m["tokens_this_run"] / m["steps"]  # packed blocks: ~the same tokens every step
                span = times[last] - times[args.skip]
                results[name].update(
                    {
                        "steady_steps": f"{args.skip + 1}-{last}",
                        "steady_s_per_step": round(span / (last - args.skip), 4),
                        "steady_tokens_per_second": round(per_step * (last - args.skip) / span, 1),
                    }
                )
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "losses"}), flush=True)
            result_path.write_text(json.dumps({"sets": base, "results": results}, indent=1))
        one, many = results.get(f"{w}-1gpu"), results.get(f"{w}-{args.gpus}gpu")
        if one and many:
            diffs = [abs(a - b) for a, b in zip(one["losses"], many["losses"])]
            steady = ""
            if one.get("steady_tokens_per_second") and many.get("steady_tokens_per_second"):
                steady = f" (steady: {many['steady_tokens_per_second'] / one['steady_tokens_per_second']:.2f}x)"
            print(
                f"{w}: scaling {many['tokens_per_second'] / one['tokens_per_second']:.2f}x on {args.gpus} "
                f"GPUs{steady}; "
                f"loss max |diff| {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
