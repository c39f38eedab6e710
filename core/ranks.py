"""Which process of a multi-node data-parallel run this is, from the engine's rendezvous environment.

Three launchers start a stage's process as part of a run over several machines:

- Kubeflow Trainer (a TrainJob on the ``torch-distributed`` runtime, KFP and Argo): one stage process
  per node, with torchrun's own variables ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
  ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``; torchrun reads them as its flags (its ``--node-rank``
  defaults to ``PET_NODE_RANK``), so the train stage starts torchrun with no rendezvous flags of its own.
- AzureML's PyTorch distribution: ``process_count_per_instance`` stage processes per node, each with
  ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``RANK`` and ``LOCAL_RANK``: each is
  one rank already.
- The local runner: one stage process, which starts one torchrun agent per "node" itself.

Only the process that holds global rank 0 (node 0) writes and seals the stage's outputs; the others
train and leave nothing behind (core/runner.py asks :func:`writes_outputs`).
"""

from __future__ import annotations

import os

TRAINER_VARS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
PROCESS_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK")


def writes_outputs(environ=None) -> bool:
    """False for every process but the one holding global rank 0 (node 0, rank 0)."""
    env = os.environ if environ is None else environ
    return all(env.get(var, "0") == "0" for var in ("PET_NODE_RANK", "NODE_RANK", "RANK"))


def trainer_node(environ=None) -> dict[str, str] | None:
    """Kubeflow Trainer's rendezvous variables for this node, or None when it did not start it."""
    env = os.environ if environ is None else environ
    if "PET_NNODES" not in env:
        return None
    return {var: env.get(var, "") for var in TRAINER_VARS}


def engine_rank(environ=None) -> tuple[int, int, int] | None:
    """(rank, local rank, world size) of a process an engine started as one rank (AzureML's PyTorch
    distribution); None where no engine did (torchrun's own workers are started by the stage)."""
    env = os.environ if environ is None else environ
    if not all(env.get(var) for var in PROCESS_VARS) or "PET_NNODES" in env:
        return None
    return int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
