#!/usr/bin/env python
"""Loss curves of the train stage, fast path vs plain path, on the real tone data.

Runs data_prep once, then the train stage (its real command line, ``python -m stages.train``)
with each ``--set``-style variant, ``train.log_every=1``, and compares the per-step losses of
each variant with the first one. Two runs of the same variant give the noise floor (CUDA kernels
are not deterministic), so compare the fast/plain gap to the plain/plain gap.

    python bench/gpu/loss_curve.py --config configs/tiny-phi3.yaml --steps 50 --out OUT \
        --variant plain:train.padding_free=off,train.kernels=none \
        --variant plain2:train.padding_free=off,train.kernels=none \
        --variant fast: --set runtime.device=cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def stage(name: str, cfg, inputs: dict, outputs: dict) -> float:
    from stages.registry import STAGES

    spec = STAGES[name]
    argv = spec.argv(spec.params(cfg), inputs, outputs)
    t = time.time()
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.time() - t


def main() -> int:
    from core.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny-phi3.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    base = args.set + [f"train.max_steps={args.steps}", "train.log_every=1", f"train.checkpoint_every={args.steps}"]
    work = Path(tempfile.mkdtemp(prefix="loss-curve-"))
    cfg = load_config(ROOT / args.config, base)
    stage("data_prep", cfg, {}, {"dataset": str(work / "dataset")})
    curves, meta = {}, {}
    for v in args.variant:
        name, _, sets = v.partition(":")
        over = [s for s in sets.split(",") if s]
        vcfg = load_config(ROOT / args.config, base + over)
        seconds = stage("train", vcfg, {"dataset": str(work / "dataset")}, {"adapter": str(work / name)})
        log = [json.loads(line) for line in (work / name / "train_log.jsonl").read_text().splitlines()]
        curves[name] = [h["loss"] for h in log]
        meta[name] = {
            "overrides": over,
            "wall_s": round(seconds, 1),
            **json.loads((work / name / "metrics.json").read_text()),
        }
    names = list(curves)
    ref = curves[names[0]]
    summary = {}
    for n in names[1:]:
        c = curves[n]
        diffs = [abs(a - b) for a, b in zip(ref, c)]
        summary[f"{n} vs {names[0]}"] = {
            "max_abs_diff": round(max(diffs), 5),
            "mean_abs_diff": round(sum(diffs) / len(diffs), 5),
            "first": c[0],
            "last": c[-1],
            "ref_first": ref[0],
            "ref_last": ref[-1],
        }
    result = {"config": args.config, "sets": base, "curves": curves, "meta": meta, "summary": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss_curve.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    for n in names:
        m = meta[n]
        print(
            n,
            {
                k: m.get(k)
                for k in ("wall_s", "tokens_per_second", "peak_gpu_memory_gib", "fast_path", "first_loss", "final_loss")
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
