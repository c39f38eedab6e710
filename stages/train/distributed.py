"""Data-parallel training over N ranks per node on M nodes: torchrun, one process per GPU (or per CPU rank).

``train.gpus: N`` makes the train stage start ``torchrun --standalone --nproc-per-node N`` (rank.py, one
process per GPU); each rank runs ``stage.train`` on its share of every optimizer step and rank 0 writes
the outputs into the stage's (temporary) output folder. ``train.nodes: M`` spans M machines, started by
the engine's own runtime (core/ranks.py says which): on Kubeflow Trainer each node's stage process starts
torchrun, which reads the node's ``PET_*`` rendezvous; AzureML starts every rank as a stage process
(:func:`join`); the local runner starts M torchrun agents on this machine that meet through a c10d
rendezvous on 127.0.0.1, as M machines would. On CPU the ranks are processes meeting over gloo.

Semantics are the one-GPU run's, whatever the split over nodes:

- the same examples per optimizer step, chosen by (seed, step): rank r takes every (N x M)-th example
  of the step's ``batch_size x grad_accum``, packed padding-free; per-token loss weights are
  global (fast.pack_step), so the averaged gradient equals the one-GPU gradient of that step;
- the same LoRA init (seeded, then broadcast from rank 0); LoRA dropout draws per rank from
  (seed, rank, step);
- gradients are all-reduced (average) once per optimizer step, after the last pass — DDP's
  ``no_sync`` accumulation, without the DDP wrapper, so gradient checkpointing, liger and compile
  need no special cases;
- checkpoints are rank 0's, on storage every node sees (beside the output, or ``SLM_CHECKPOINT_DIR``
  on the cache volume), and every rank resumes from them; a SIGTERM on any rank stops all ranks at
  the same step (the flag is all-reduced with the loss), after rank 0's checkpoint. A node that is
  lost (killed, preempted) fails every rank's next collective: the stage exits as a transient failure
  (exit 1, retried by the engines) and the retry resumes from rank 0's last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from core import ranks
from core.errors import UserError
from core.runner import Interrupted
from stages.registry import TrainParams

log = logging.getLogger("slm")


def launch(params: TrainParams, ckpt, dataset: Path, adapter: Path, device: str) -> None:
    """Run this node's ranks under torchrun (the local runner: every node's) and wait; SIGTERM is
    forwarded (torchrun passes it on)."""
    per_node, nodes = params.train.gpus, (params.train.nodes or 1)
    local_nodes = 1 if nodes == 1 or ranks.trainer_node() else nodes  # the local runner: every node here
    if device == "cuda" and torch.cuda.device_count() < per_node * local_nodes:
        raise UserError(
            f"train.gpus={per_node} on {local_nodes} node(s) here, but this machine has "
            f"{torch.cuda.device_count()} GPU(s)"
        )
    with tempfile.TemporaryDirectory(prefix="train-ddp-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "params": params.model_dump(mode="json"),  # rank.py: TrainParams again
                    "dataset": str(dataset),
                    "adapter": str(adapter),
                    "ckpt_root": str(ckpt.root),
                    "cache_key": ckpt.key,
                }
            )
        )
        worker = ["-m", "stages.train.rank", str(spec)]
        agents = [[sys.executable, "-m", "torch.distributed.run", *flags, *worker] for flags in _agent_flags(params)]
        log.info("data-parallel over %d node(s) x %d rank(s): %s", nodes, per_node, " ".join(agents[0][1:]))
        codes, got = _run_agents(agents, _gpus_per_agent(device, per_node, len(agents)))
    if got["signal"]:
        raise Interrupted(f"{signal.Signals(got['signal']).name}; the ranks checkpointed and stopped")
    failed = {i: c for i, c in enumerate(codes) if c}
    if failed:
        # A lost node fails the others' collectives: a retry resumes from rank 0's checkpoint.
        raise ConnectionError(
            f"data-parallel training stopped (torchrun exit codes by node {failed}); see the ranks' log above; "
            "a re-run resumes from the last checkpoint"
        )


def _agent_flags(params: TrainParams) -> list[list[str]]:
    """torchrun's flags, one list per agent this process starts."""
    per_node, nodes = params.train.gpus, (params.train.nodes or 1)
    if nodes == 1:
        return [["--standalone", f"--nproc-per-node={per_node}"]]
    trainer = ranks.trainer_node()
    if trainer:  # Kubeflow Trainer: torchrun reads the node rank and master from PET_*
        if trainer["PET_NNODES"] != str(nodes):
            raise UserError(f"train.nodes={nodes} but the TrainJob started {trainer['PET_NNODES']} nodes")
        return [[f"--nnodes={nodes}", f"--nproc-per-node={per_node}"]]
    # The local runner: every node on this machine, meeting through c10d on 127.0.0.1.
    endpoint, run_id = f"127.0.0.1:{_free_port()}", f"slm-{uuid.uuid4().hex[:12]}"
    return [
        [
            f"--nnodes={nodes}",
            f"--nproc-per-node={per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}",
            f"--rdzv-conf=is_host={'true' if node == 0 else 'false'}",  # node 0's agent holds the store
            "--max-restarts=0",
        ]
        for node in range(nodes)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpus_per_agent(device: str, per_node: int, agents: int) -> list[dict[str, str]]:
    """Each local "node" its own GPUs (their ranks count local ranks from 0, as on separate machines)."""
    if device != "cuda" or agents == 1:
        return [{} for _ in range(agents)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[i * per_node : (i + 1) * per_node])} for i in range(agents)]


def _run_agents(agents: list[list[str]], extra: list[dict[str, str]]) -> tuple[list[int], dict]:
    """Start every agent in its own process group (a node: killing it takes its ranks too), wait for all."""
    # Keep NVLink multicast (NVLS) off unless the caller set it: some shared hosts forbid it.
    root = str(Path(__file__).resolve().parents[2])
    env = {"NCCL_NVLS_ENABLE": "0", **os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    procs = [
        subprocess.Popen(cmd, env={**env, **more}, cwd=root, start_new_session=len(agents) > 1)
        for cmd, more in zip(agents, extra)
    ]
    for node, proc in enumerate(procs):
        log.info("node %d: torchrun agent pid %d", node, proc.pid)
    got = {"signal": None}

    def forward(signum, _frame):
        got["signal"] = signum
        for proc in procs:
            proc.send_signal(signum)

    # Agents in their own sessions (several nodes) miss a terminal's Ctrl-C: pass SIGINT on too.
    signals = (signal.SIGTERM, signal.SIGINT) if len(procs) > 1 else (signal.SIGTERM,)
    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:  # only on an error of this process: no agent outlives the stage
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return codes, got


def join(train, params: TrainParams, ckpt, dataset: Path, adapter: Path, device: str) -> None:
    """This process is one rank that the engine started (AzureML's PyTorch distribution): meet the
    others through the engine's MASTER_ADDR/MASTER_PORT and ``train`` (stage.train) as that rank."""
    rank, local, world = ranks.engine_rank()
    expected = params.train.gpus * (params.train.nodes or 1)
    if world != expected:
        raise UserError(
            f"the engine started {world} ranks but train.nodes x train.gpus = {expected}; compile the pipeline again"
        )
    init(device, local)
    try:
        train(params, ckpt, dataset, adapter, rank=rank, world=world)
    finally:
        dist.destroy_process_group()


def init(device: str, local: int) -> None:
    """The process group: NCCL on this rank's GPU, gloo on CPU; the rendezvous from the environment."""
    if device == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")


def broadcast_parameters(params) -> None:
    for p in params:
        dist.broadcast(p.data, src=0)


def barrier() -> None:
    dist.barrier()


def same_start(step: int, where: Path) -> None:
    """Every rank resumes at rank 0's step, or every rank stops: a rank that saw another checkpoint (or
    none) reads a folder the others do not share."""
    t = torch.tensor([step, -step], device=_where(), dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise UserError(
            f"the ranks found checkpoints of different steps ({-int(t[1])} to {int(t[0])}) in {where}: it must be "
            "storage every node sees (set SLM_CHECKPOINT_DIR to a shared volume)"
        )


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
        _average(flat)
        at = 0
        for g in group:
            g.copy_(flat[at : at + g.numel()].view_as(g))
            at += g.numel()


def _average(t: torch.Tensor) -> None:
    if dist.get_backend() == "nccl":
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
    else:  # gloo has no AVG
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())


def _where() -> str:
    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"


def agree(loss: float, stop: bool) -> tuple[float, bool]:
    """The global loss of the step (the weighted per-rank sums, averaged) and whether any rank stops."""
    t = torch.tensor([loss, 1.0 if stop else 0.0], device=_where(), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0]) / dist.get_world_size(), bool(t[1] > 0)


def total(value: float) -> float:
    t = torch.tensor([float(value)], device=_where(), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0])
