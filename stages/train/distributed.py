"""Data-parallel training over N GPUs of one machine: torchrun, one process per GPU.

``train.gpus: N`` (CUDA) makes the train stage start ``torchrun --standalone --nproc-per-node N``
(rank.py, one process per GPU); each rank runs ``stage.train`` on its share of every optimizer step and rank 0
writes the outputs into the stage's (temporary) output folder. Semantics are the one-GPU run's:

- the same examples per optimizer step, chosen by (seed, step): rank r takes every N-th example
  of the step's ``batch_size x grad_accum``, packed padding-free; per-token loss weights are
  global (fast.pack_step), so the averaged gradient equals the one-GPU gradient of that step;
- the same LoRA init (seeded, then broadcast from rank 0); LoRA dropout draws per rank;
- gradients are all-reduced (NCCL, average) once per optimizer step, after the last pass — DDP's
  ``no_sync`` accumulation, without the DDP wrapper, so gradient checkpointing, liger and compile
  need no special cases;
- checkpoints are rank 0's and every rank resumes from them; a SIGTERM on any rank stops all
  ranks at the same step (the flag is all-reduced with the loss), after rank 0's checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from core.errors import UserError
from core.runner import Interrupted

log = logging.getLogger("slm")


def launch(cfg, ckpt, dataset: Path, adapter: Path, world: int) -> None:
    """Run the N ranks under torchrun and wait; SIGTERM is forwarded (torchrun passes it on)."""
    available = torch.cuda.device_count()
    if available < world:
        raise UserError(f"train.gpus={world} but this machine has {available} GPU(s)")
    with tempfile.TemporaryDirectory(prefix="train-ddp-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "config": {k: v.model_dump(mode="json") for k, v in cfg.sections().items()},
                    "dataset": str(dataset),
                    "adapter": str(adapter),
                    "ckpt_root": str(ckpt.root),
                    "cache_key": ckpt.key,
                }
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={world}",
            "-m",
            "stages.train.rank",
            str(spec),
        ]
        log.info("data-parallel over %d GPUs: %s", world, " ".join(cmd[1:]))
        # Keep NVLink multicast (NVLS) off unless the caller set it: some shared hosts forbid it.
        root = str(Path(__file__).resolve().parents[2])
        env = {"NCCL_NVLS_ENABLE": "0", **os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(cmd, env=env, cwd=root)
        got = {"signal": None}

        def forward(signum, _frame):
            got["signal"] = signum
            proc.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
    if got["signal"]:
        raise Interrupted(f"{signal.Signals(got['signal']).name}; the ranks checkpointed and stopped")
    if code != 0:
        raise UserError(f"data-parallel training failed (torchrun exit {code}); see the ranks' log above")


def broadcast_parameters(params) -> None:
    for p in params:
        dist.broadcast(p.data, src=0)


def barrier() -> None:
    dist.barrier()


def all_reduce_gradients(params, bucket: int = 2**26) -> None:
    """Average the gradients over ranks, in flat buckets of at most ~64M elements of one dtype."""
    grads = []
    for p in params:
        if p.grad is None:  # a parameter no pass reached on this rank still takes part
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    i = 0
    while i < len(grads):
        group, size = [], 0
        while i < len(grads) and (
            not group or (size + grads[i].numel() <= bucket and grads[i].dtype == group[0].dtype)
        ):
            group.append(grads[i])
            size += grads[i].numel()
            i += 1
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.AVG)
        at = 0
        for g in group:
            g.copy_(flat[at : at + g.numel()].view_as(g))
            at += g.numel()


def agree(loss: float, stop: bool) -> tuple[float, bool]:
    """The global loss of the step (the weighted per-rank sums, averaged) and whether any rank stops."""
    t = torch.tensor([loss, 1.0 if stop else 0.0], device=f"cuda:{torch.cuda.current_device()}", dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0]) / dist.get_world_size(), bool(t[1] > 0)


def total(value: float) -> float:
    t = torch.tensor([float(value)], device=f"cuda:{torch.cuda.current_device()}", dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0])
