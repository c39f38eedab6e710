from __future__ import annotations

import logging
from pathlib import Path

from core.artifacts import write_json
from core.runner import StageContext
from core.spec import per_task_inputs
from core.tasks import SERVE_ADAPTERS, SERVE_BASE
from stages.registry import AdapterBuildParams

from . import adapter_base, adapter_export

log = logging.getLogger("slm")


def run(params: AdapterBuildParams, ctx: StageContext, onnx_base: Path, **adapters: Path) -> None:
    """Build the base for ``adapters`` (``adapter_<task>``: each task's train output) into ``onnx_base``."""
    by_task = per_task_inputs(ctx.spec, adapters)["adapter"]
    base = adapter_base.build_for_adapters(params, list(by_task.values()), onnx_base / SERVE_BASE)
    exported = {}
    for task, adapter in by_task.items():
        exported[task] = adapter_export.export(adapter, base, onnx_base / SERVE_ADAPTERS / f"{task}.onnx_adapter")
        log.info("%s: %d parameters over %d modules", task, exported[task]["parameters"], exported[task]["modules"])
    write_json(onnx_base / "adapters.json", {"target_modules": base.target_modules, "adapters": exported})
