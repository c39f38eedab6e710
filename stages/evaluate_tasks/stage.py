from __future__ import annotations

import shutil
from pathlib import Path

from core.errors import QualityGateError, UserError
from core.io import read_json
from core.runner import StageContext
from core.spec import per_task_inputs
from core.tasks import SERVE_ADAPTERS, SERVE_BASE
from stages.evaluate.stage import rejected_paths
from stages.registry import EvaluateTasksParams

from . import report as html_report
from .switching import TaskEval, evaluate_tasks


def run(params: EvaluateTasksParams, ctx: StageContext, onnx_base: Path, metrics: Path, **inputs: Path) -> None:
    """``inputs``: ``dataset_<task>`` and ``onnx_model_<task>`` (its merged INT4 build) of every task."""
    ports = per_task_inputs(ctx.spec, inputs)
    tasks = {t.name: t for t in params.tasks or []}
    if set(tasks) != set(ports["dataset"]):
        raise UserError(f"tasks {sorted(tasks)} in the config, datasets for {sorted(ports['dataset'])} given")
    evals = [
        TaskEval(
            name,
            ports["dataset"][name],
            onnx_base / SERVE_ADAPTERS / f"{name}.onnx_adapter",
            ports["onnx_model"][name],
            tasks[name].gate.min_accuracy,
            tasks[name].gate.max_switch_drop,
        )
        for name in sorted(tasks)
    ]
    for old in rejected_paths(ctx):  # an earlier failed gate's: never left to describe this run
        old.unlink(missing_ok=True)
    try:
        report = evaluate_tasks(onnx_base / SERVE_BASE, evals, params.evaluate, metrics)
    except QualityGateError:
        # Unsealed on a failed gate: the numbers and the page go beside where the output would have been.
        report = read_json(metrics / "metrics.rejected.json", "metrics")
        rejected, rejected_page = rejected_paths(ctx)
        shutil.copyfile(metrics / "metrics.rejected.json", rejected)
        html_report.write(rejected_page, report)
        raise
    html_report.write(metrics / "report.html", report)
