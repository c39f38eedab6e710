"""The train stage's resumable state: trainable weights, optimizer, schedule, RNG and loss history.

One checkpoint is kept (``latest``), written to a temporary folder and renamed into place, so a kill at
any instant leaves either the previous or the new one. A checkpoint is valid only for the cache key it
was made with: other inputs or parameters discard it. On restore the saved weights must name exactly the
model's trainable parameters, with the same shapes; anything else is an error, never a partial copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core import faults
from core.errors import UserError
from core.runner import StageContext

log = logging.getLogger("slm")


def checkpoint_root(ctx: StageContext) -> Path:
    """Where checkpoints live: under ``SLM_CHECKPOINT_DIR`` keyed by cache key when set (a
    cluster's cache volume, which a retried pod sees again), else beside the output."""
    shared = os.environ.get("SLM_CHECKPOINT_DIR")
    if shared:
        return Path(shared) / ctx.cache_key
    return Path(str(ctx.finals["adapter"]) + ".checkpoints")


class Checkpoints:
    """The latest training state, written atomically; valid only for the same cache key."""

    def __init__(self, root: Path, key: str):
        self.root, self.key = root, key

    def restore(self, model, optimizer, scheduler) -> tuple[int, list]:
        """Load the latest checkpoint into model, optimizer and scheduler; (step, history), or (0, [])."""
        self._recover()
        state_dir = self.root / "latest"
        meta_path = state_dir / "meta.json"
        if not meta_path.is_file():
            return 0, []
        meta = json.loads(meta_path.read_text())
        if meta.get("cache_key") != self.key:
            log.info("ignoring a checkpoint made with other inputs or parameters")
            shutil.rmtree(self.root, ignore_errors=True)
            return 0, []
        weights = load_file(state_dir / "trainable.safetensors")
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        check_keys(weights, named, state_dir)
        with torch.no_grad():
            for name, tensor in weights.items():
                named[name].copy_(tensor)
        optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(torch.load(state_dir / "rng.pt", weights_only=True))
        log.info("resumed from the checkpoint at step %d", meta["step"])
        return meta["step"], meta["history"]

    def save(self, step: int, model, optimizer, scheduler, history: list) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{step}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        meta = {"step": step, "cache_key": self.key, "scheduler": scheduler.state_dict(), "history": history}
        (tmp / "meta.json").write_text(json.dumps(meta))
        old = self.root / "latest"
        if old.exists():
            os.replace(old, self.root / f".old-{os.getpid()}")
            faults.point("train.checkpoint_swap")  # between the renames: no "latest" at all
        os.replace(tmp, old)
        shutil.rmtree(self.root / f".old-{os.getpid()}", ignore_errors=True)
        log.info("checkpoint at step %d", step)
        faults.point("train.after_checkpoint")

    def _recover(self) -> None:
        """After a kill between save's two renames there is no ``latest``: take the newest complete
        checkpoint left beside it (``meta.json`` is written last, so its presence means complete)."""
        if not self.root.is_dir():
            return
        found = []
        for folder in [*self.root.glob(".old-*"), *self.root.glob(".tmp-*")]:
            try:
                found.append((json.loads((folder / "meta.json").read_text())["step"], str(folder)))
            except (OSError, ValueError, KeyError):
                pass
        if not (self.root / "latest").exists() and found:
            step, folder = max(found)
            os.replace(folder, self.root / "latest")
            log.info("recovered the checkpoint at step %d that a kill left unrenamed", step)
        for folder in [*self.root.glob(".old-*"), *self.root.glob(".tmp-*")]:
            shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def check_keys(saved: dict[str, torch.Tensor], trainable: dict[str, torch.Tensor], where: Path) -> None:
    """The saved tensors must be exactly the trainable parameters, shape for shape."""
    missing = sorted(set(trainable) - set(saved))
    unexpected = sorted(set(saved) - set(trainable))
    reshaped = sorted(n for n in set(saved) & set(trainable) if saved[n].shape != trainable[n].shape)
    if not (missing or unexpected or reshaped):
        return
    problems = [
        f"{what} {_some(names)}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped))
        if names
    ]
    raise UserError(
        f"the checkpoint in {where} does not fit the model's trainable parameters: "
        f"{'; '.join(problems)}. Delete {where.parent} to start the training over"
    )


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
