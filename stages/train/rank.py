"""One rank of data-parallel training: what torchrun runs on each GPU (distributed.launch starts it).

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

from core.config import Config
from core.runner import Interrupted, StageConfig

from .stage import Checkpoints, train

log = logging.getLogger("slm")


def main(spec_path: str) -> int:
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO, format=f"[train rank {rank}] %(message)s", stream=sys.stderr)
    spec = json.loads(Path(spec_path).read_text())
    full = Config.model_validate(spec["config"])  # the stage's sections (model, train, runtime)
    cfg = StageConfig(full, tuple(spec["config"]))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    if rank:
        logging.getLogger("slm").setLevel(logging.WARNING)
    try:
        train(
            cfg,
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
