#!/usr/bin/env python
"""The train stage's per-step gradient all-reduce alone: ``stages.train.distributed.all_reduce_gradients``
on fp32 tensors shaped like Phi-3-mini's LoRA (r 64 on qkv_proj, o_proj, gate_up_proj, down_proj:
100.66 M parameters, 403 MB), timed over ``--reps`` calls after 3 warm-up calls.

    torchrun --standalone --nproc-per-node 2 bench/gpu/allreduce_probe.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch
    import torch.distributed as dist

    from stages.train.distributed import all_reduce_gradients

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    h, inter, r, layers = 3072, 8192, 64, 32
    shapes = [(r, h), (3 * h, r), (r, h), (h, r), (r, h), (2 * inter, r), (r, inter), (h, r)]  # A, B of each target
    params = [torch.nn.Parameter(torch.zeros(s, device="cuda")) for _ in range(layers) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    n = sum(p.numel() for p in params)
    for _ in range(3):
        all_reduce_gradients(params)
    torch.cuda.synchronize()
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        all_reduce_gradients(params)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if dist.get_rank() == 0:
        best, mid = min(times), sorted(times)[len(times) // 2]
        print(
            json.dumps(
                {
                    "parameters": n,
                    "bytes": 4 * n,
                    "world": dist.get_world_size(),
                    "best_ms": round(best * 1e3, 2),
                    "median_ms": round(mid * 1e3, 2),
                    "algbw_GBps": round(4 * n / mid / 1e9, 1),
                }
            ),
            flush=True,
        )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
