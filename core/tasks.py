"""A multi-adapter job's tasks (``tasks:``, docs/multi-adapter.md) as the single-task configs the
stages already run with: the fan-out's one place that reads the list."""

from __future__ import annotations

from core.config import Config
from core.errors import UserError


def task_config(cfg: Config, name: str) -> Config:
    """The single-task config of task ``name``: what its data_prep, train and merge run with
    (its data and LoRA; the shared model, onnx and runtime; its gate's floor)."""
    task = next((t for t in cfg.tasks or [] if t.name == name), None)
    if task is None:
        raise UserError(f"no task {name!r}; the config has {[t.name for t in cfg.tasks or []]}")
    return cfg.model_copy(
        update={
            "name": f"{cfg.name}-{task.name}"[:63].rstrip("-"),
            "data": task.data,
            "train": cfg.train.model_copy(update={"lora": task.lora}),
            "evaluate": cfg.evaluate.model_copy(update={"min_accuracy": task.gate.min_accuracy}),
            "tasks": None,
        }
    )


# The folder a multi-task job serves from (adapter_build's output, docs/multi-adapter.md): the
# adapter-ready model, and one .onnx_adapter a task.
SERVE_BASE, SERVE_ADAPTERS = "base", "adapters"

# The keys task_config gives each task its own value of: a task's step compiles them in (the task's
# value), while the other run parameters stay the run's knobs for every step.
TASK_KEYS = ("data.", "train.lora.", "evaluate.min_accuracy")


def task_owned(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in TASK_KEYS)


def union_target_modules(cfg: Config, default: list[str]) -> list[str]:
    """The target modules the shared base is built for: every task's (``default`` where unset)."""
    return sorted({m for t in cfg.tasks or [] for m in (t.lora.target_modules or default)})
