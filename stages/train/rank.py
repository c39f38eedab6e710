"""One rank of data-parallel training: what torchrun runs per GPU or CPU rank (distributed.launch starts it).

Its own module, so that distributed.py (the collectives, which the recipe calls) does not import
the recipe back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from core.models import device_for
from core.runner import Interrupted
from stages.registry import TrainParams

from .distributed import init
from .stage import Checkpoints, train

log = logging.getLogger("slm")


def main(spec_path: str) -> int:
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO, format=f"[train rank {rank}] %(message)s", stream=sys.stderr)
    spec = json.loads(Path(spec_path).read_text())
    params = TrainParams.model_validate(spec["params"])  # the stage's view, as distributed.launch wrote it
    # runtime.threads, as the stage process sets it; unset: this machine's cores shared by its ranks
    # (torchrun sets OMP_NUM_THREADS=1 only for more than one rank per node, so the split would change the math).
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(params.runtime.threads or max(1, (os.cpu_count() or 1) // local_world))
    init(device_for(params.runtime), local)
    if rank:
        logging.getLogger("slm").setLevel(logging.WARNING)
    try:
        train(
            params,
            Checkpoints(Path(spec["ckpt_root"]), spec["cache_key"]),
            Path(spec["dataset"]),
            Path(spec["adapter"]),
            rank=rank,
            world=world,
        )
    except Interrupted as e:
        log.warning("rank %d stopped: %s", rank, e)
        return 143
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
