"""MLflow tracking, on only when ``MLFLOW_TRACKING_URI`` is set (AzureML sets it for every job,
with ``MLFLOW_RUN_ID`` naming the job's own run, so the values show in the portal).

After a stage has sealed its outputs, :func:`log_stage` logs, into the stage's MLflow run:

- its parameters (the flattened config keys it was called with: ``train.lora.r``...);
- ``train_loss`` per step, from a ``train_log.jsonl`` in an output (the train stage's adapter);
- the final metrics: the scalars of each output's ``metrics.json`` (its ``summary`` block where
  there is one: evaluate's accuracy, macro-F1, agreement, INT4 drop);
- ``report.html`` as an artifact, where an output has one (evaluate).

Without ``MLFLOW_RUN_ID`` (a local run) each stage gets its own run, named after the stage and
tagged ``slm.stage``, in ``MLFLOW_EXPERIMENT_NAME`` (else MLflow's default experiment).
``mlflow`` (the ``mlflow-skinny`` package) is imported only when tracking is on. A tracking
server that fails does not fail a stage whose outputs are already sealed: it is a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("slm")
URI_ENV = "MLFLOW_TRACKING_URI"


def enabled() -> bool:
    return bool(os.environ.get(URI_ENV, "").strip())


def log_stage(stage: str, params: dict, outputs: dict[str, Path]) -> str | None:
    """Log one finished stage; returns the MLflow run id (None when tracking is off or failed)."""
    if not enabled():
        return None
    try:
        return _log(stage, params, outputs)
    except Exception as e:  # noqa: BLE001 - the outputs are sealed; say so, do not fail the stage
        log.warning(
            "MLflow logging to %s failed: %s: %s",
            os.environ.get(URI_ENV),
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        return None


def _log(stage: str, params: dict, outputs: dict[str, Path]) -> str:
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from runtime.kfp_output import flatten_scalars

    resume = bool(os.environ.get("MLFLOW_RUN_ID"))
    with mlflow.start_run(**({} if resume else {"run_name": stage}), tags={"slm.stage": stage}) as run:
        run_id = run.info.run_id
        client = MlflowClient()
        # A resumed run (AzureML's job run) may carry these keys already: params are write-once.
        existing = client.get_run(run_id).data.params
        plist = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        metrics: list[Metric] = []
        now = _now_ms()
        for folder in outputs.values():
            folder = Path(folder)
            history = folder / "train_log.jsonl"
            if history.is_file():
                for line in history.read_text().splitlines():
                    row = json.loads(line)
                    if isinstance(row.get("loss"), (int, float)):
                        metrics.append(Metric("train_loss", float(row["loss"]), now, int(row.get("step", 0))))
                    if isinstance(row.get("lr"), (int, float)):
                        metrics.append(Metric("learning_rate", float(row["lr"]), now, int(row.get("step", 0))))
            result = folder / "metrics.json"
            if result.is_file():
                data = json.loads(result.read_text())
                scalars = flatten_scalars(data.get("summary", data) if isinstance(data, dict) else {})
                metrics += [Metric(k, v, now, 0) for k, v in scalars.items()]
        for i in range(0, max(len(plist), len(metrics)), 100):  # MLflow's batch limits
            client.log_batch(run_id, metrics=metrics[i : i + 100], params=plist[i : i + 100])
        for folder in outputs.values():
            page = Path(folder) / "report.html"
            if page.is_file():
                client.log_artifact(run_id, str(page))
    log.info("MLflow: logged %d params, %d metric values to run %s", len(plist), len(metrics), run_id)
    return run_id


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's limit on a param value


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
