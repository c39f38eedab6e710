"""MLflow tracking (MLFLOW_TRACKING_URI set, as on AzureML): what the stages logged is readable
back with the MLflow client from the tiny run's file store (tests/conftest.py)."""
from __future__ import annotations

import json

from mlflow.tracking import MlflowClient


def test_stages_log_params_loss_metrics_and_report(tiny_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tiny_run.parent / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tiny-run")
    assert experiment is not None
    runs = {r.data.tags["slm.stage"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"data_prep", "train", "merge", "onnx_build", "evaluate"}

    train = runs["train"]
    assert train.data.params["train.lora.r"] == "8" and train.data.params["model.base"] == "tiny-random:phi3"
    losses = client.get_metric_history(train.info.run_id, "train_loss")
    logged = [json.loads(line) for line in (tiny_run / "train" / "adapter" / "train_log.jsonl").read_text().splitlines()]
    assert [(m.step, round(m.value, 6)) for m in sorted(losses, key=lambda m: m.step)] == \
        [(h["step"], round(h["loss"], 6)) for h in logged]

    evaluate = runs["evaluate"]
    summary = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())["summary"]
    assert evaluate.data.metrics["pytorch_accuracy"] == summary["pytorch"]["accuracy"]
    assert evaluate.data.metrics["onnx_int4_accuracy"] == summary["onnx_int4"]["accuracy"]
    assert evaluate.data.metrics["agreement"] == summary["agreement"]
    assert evaluate.data.params["evaluate.max_int4_drop"] == "1.0"
    assert [a.path for a in client.list_artifacts(evaluate.info.run_id)] == ["report.html"]
    page = client.download_artifacts(evaluate.info.run_id, "report.html")
    assert open(page).read() == (tiny_run / "evaluate" / "metrics" / "report.html").read_text()
