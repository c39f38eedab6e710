"""MLflow tracking (MLFLOW_TRACKING_URI set, as on AzureML): what the stages logged is readable
back with the MLflow client from the tiny run's file store (tests/conftest.py); and with
AzureML's own ``azureml://`` tracking URI, the ``azureml-mlflow`` plugin carries the same
values to the workspace (a loopback HTTPS recorder, tests/recorders.py)."""

from __future__ import annotations

import json

import recorders
from mlflow.tracking import MlflowClient

from core import artifacts
from runtime import tracking


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
    logged = [
        json.loads(line) for line in (tiny_run / "train" / "adapter" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [(m.step, round(m.value, 6)) for m in sorted(losses, key=lambda m: m.step)] == [
        (h["step"], round(h["loss"], 6)) for h in logged
    ]

    evaluate = runs["evaluate"]
    summary = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())["summary"]
    assert evaluate.data.metrics["pytorch_accuracy"] == summary["pytorch"]["accuracy"]
    assert evaluate.data.metrics["onnx_int4_accuracy"] == summary["onnx_int4"]["accuracy"]
    assert evaluate.data.metrics["agreement"] == summary["agreement"]
    assert evaluate.data.params["evaluate.max_int4_drop"] == "1.0"
    assert [a.path for a in client.list_artifacts(evaluate.info.run_id)] == ["report.html"]
    page = client.download_artifacts(evaluate.info.run_id, "report.html")
    assert open(page).read() == (tiny_run / "evaluate" / "metrics" / "report.html").read_text()


def test_azureml_tracking_uri_sends_params_loss_metrics_and_report(tiny_run, tmp_path, monkeypatch):
    """What AzureML sets in a job (MLFLOW_TRACKING_URI azureml://..., MLFLOW_TRACKING_TOKEN,
    MLFLOW_RUN_ID, MLFLOW_EXPERIMENT_ID) and what the stages log then: the portal's requests."""
    ca, cert, key = recorders.make_tls(tmp_path)
    sub, rg, ws = "00000000-0000-0000-0000-0000000000dd", "slm-rg", "slm-ws"
    token = recorders.jwt({"aud": "https://ml.azure.com", "exp": 4102444800, "tok": "CANARY"})
    with recorders.Recorder(recorders.azureml_mlflow_routes("job-run-7", "exp-3"), tls=(cert, key)) as portal:
        host = portal.url.split("://", 1)[1]
        monkeypatch.setenv(
            "MLFLOW_TRACKING_URI",
            f"azureml://{host}/mlflow/v1.0/subscriptions/{sub}/resourceGroups/{rg}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{ws}",
        )
        for name, value in {
            "MLFLOW_TRACKING_TOKEN": token,
            "MLFLOW_RUN_ID": "job-run-7",
            "MLFLOW_EXPERIMENT_ID": "exp-3",
            "REQUESTS_CA_BUNDLE": str(ca),
        }.items():
            monkeypatch.setenv(name, value)
        params = artifacts.verify(tiny_run / "train" / "adapter")["params"]
        assert tracking.log_stage("train", params, {"adapter": tiny_run / "train" / "adapter"}) == "job-run-7"
        monkeypatch.setenv("MLFLOW_RUN_ID", "job-run-7")  # each AzureML job is a process; MLflow pops it at the end
        assert (
            tracking.log_stage(
                "evaluate", {"evaluate.max_int4_drop": 1.0}, {"metrics": tiny_run / "evaluate" / "metrics"}
            )
            == "job-run-7"
        )

    batches = [r.json for r in portal.requests if r.path.endswith("/runs/log-batch")]
    assert all("/mlflow/v2.0/subscriptions/" + sub in r.path for r in portal.requests if "/mlflow/" in r.path)
    metrics = [m for b in batches for m in b.get("metrics", [])]
    logged = [
        json.loads(line) for line in (tiny_run / "train" / "adapter" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [(m["step"], round(m["value"], 6)) for m in metrics if m["key"] == "train_loss"] == [
        (h["step"], round(h["loss"], 6)) for h in logged
    ]
    summary = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())["summary"]
    final = {m["key"]: m["value"] for m in metrics if m["step"] == 0 and m["key"] != "train_loss"}
    assert (
        final["onnx_int4_accuracy"] == summary["onnx_int4"]["accuracy"] and final["agreement"] == summary["agreement"]
    )
    params_sent = {p["key"]: p["value"] for b in batches for p in b.get("params", [])}
    assert params_sent["evaluate.max_int4_drop"] == "1.0" and "train.lora.r" in params_sent
    (upload,) = [r for r in portal.requests if r.method == "PUT"]
    assert (
        upload.path.endswith("/report.html")
        and upload.body == (tiny_run / "evaluate" / "metrics" / "report.html").read_bytes()
    )
    assert all(r.headers.get("authorization") == f"Bearer {token}" for r in portal.requests if "/mlflow/" in r.path)
