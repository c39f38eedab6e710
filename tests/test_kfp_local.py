"""Kubeflow Pipelines' own orchestrator runs our compiled pipeline (``kfp.local`` + DockerRunner).

``pipeline.py run --runner kfp-local`` compiles the tiny config to KFP YAML, loads it with
``kfp.components.load_component_from_file`` and executes it with ``kfp.local.DockerRunner``
on the stage images, as the images' non-root user. KFP's code resolves the placeholders,
passes the artifacts between tasks from each task's executor output, and applies the
compiled retry policy. The train task is SIGKILLed once, right after its first checkpoint:
KFP retries it, and it must resume from the checkpoint on the cache volume and end
bit-identical to the uninterrupted subprocess run.

The data-change trigger under KFP's own orchestrator: data_prep publishes ``changed`` as an
output parameter and the compiled ``dsl.If`` gates the rest. The first run (no promoted hash)
trains and is promoted; a second run given the first one's dataset hash as
``data.promoted_dataset_hash`` runs data_prep only and ends as ``skipped``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from helpers import DAG_SPECS, ROOT, TINY, run_cli, summary
from kfp.pipeline_spec import pipeline_spec_pb2
from multi_tasks import multi_config

from core import artifacts
from engines.compile_common import k8s_name

pytestmark = pytest.mark.usefixtures("images")


@pytest.fixture(scope="module")
def kfp_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("kfp") / "run"
    once = out / "pipeline_root" / ".cache" / "train-killed-once"
    proc = run_cli(
        str(ROOT / "pipeline.py"),
        "run",
        "--runner",
        "kfp-local",
        "--config",
        str(TINY),
        "--out",
        str(out),
        "--set",
        "targets.kfp.retry_backoff_seconds=1",
        env={"SLM_FAULT": "train.after_checkpoint", "SLM_FAULT_ONCE": str(once)},
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert once.exists(), "the fault never fired: the test did not kill train"
    return out, proc.stdout + proc.stderr


def _task_dir(out: Path, stage: str) -> Path:
    return Path(summary(out)["kfp_run"]) / k8s_name(stage)


def test_every_task_succeeds_under_kfp_local(kfp_run):
    out, _ = kfp_run
    stages = summary(out)["stages"]
    assert list(stages) == list(DAG_SPECS)
    assert {name: s["status"] for name, s in stages.items()} == {name: "ok" for name in DAG_SPECS}


def test_metrics_equal_the_subprocess_runner(kfp_run, tiny_run):
    out, _ = kfp_run
    assert summary(out)["metrics"] == summary(tiny_run)["metrics"]
    kfp_metrics = json.loads((_task_dir(out, "evaluate") / "metrics" / "metrics.json").read_text())
    local_metrics = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())
    for model in ("pytorch", "onnx_int4"):
        assert kfp_metrics[model]["confusion_matrix"] == local_metrics[model]["confusion_matrix"]


def test_killed_train_task_is_retried_by_kfp_and_resumes_bit_identical(kfp_run, tiny_run):
    out, log = kfp_run
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)  # kfp.local colours its status words
    # kfp.local's retry loop, driven by the compiled retryPolicy: a failed attempt, then the resumed one
    failed, resumed_at = (
        log.index("Task 'train' finished with status FAILURE"),
        log.index("resumed from the checkpoint at step 4"),
    )
    assert failed < resumed_at < log.index("Task 'train' finished with status SUCCESS")
    resumed_dir, uninterrupted_dir = _task_dir(out, "train") / "adapter", tiny_run / "train" / "adapter"
    resumed, uninterrupted = artifacts.verify(resumed_dir)["files"], artifacts.verify(uninterrupted_dir)["files"]
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert resumed[name] == uninterrupted[name], name
    # The same loss at every step both logs hold (the resumed attempt also logs its first step).
    losses = [
        {r["step"]: r["loss"] for r in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())}
        for d in (resumed_dir, uninterrupted_dir)
    ]
    assert set(losses[1]) <= set(losses[0]) and all(losses[0][k] == v for k, v in losses[1].items())
    assert json.loads((resumed_dir / "metrics.json").read_text())["resumed_from_step"] == 4


def test_each_task_registers_its_outputs_in_the_executor_output(kfp_run):
    out, _ = kfp_run
    for stage, spec in DAG_SPECS.items():
        task = _task_dir(out, stage)
        doc = json.loads((task / "executor_output.json").read_text())
        json_format.ParseDict(doc, pipeline_spec_pb2.ExecutorOutput())  # what KFP's launcher parses
        for port in spec.outputs:
            (entry,) = doc["artifacts"][port.name]["artifacts"]
            marker = artifacts.verify(task / port.name, port.type)
            assert Path(entry["uri"]) == task / port.name
            assert entry["metadata"]["content_hash"] == marker["content_hash"]
            assert entry["metadata"]["stage"] == stage


def test_metrics_and_confusion_matrix_reach_kfp(kfp_run):
    out, _ = kfp_run
    task = _task_dir(out, "evaluate")
    doc = json.loads((task / "executor_output.json").read_text())
    metrics = json.loads((task / "metrics" / "metrics.json").read_text())
    scalars = doc["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert scalars["onnx_int4_accuracy"] == metrics["summary"]["onnx_int4"]["accuracy"]
    assert scalars["pytorch_macro_f1"] == metrics["summary"]["pytorch"]["macro_f1"]
    assert scalars["agreement"] == metrics["summary"]["agreement"]
    cm = doc["artifacts"]["metrics_confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    names = [a["displayName"] for a in cm["annotationSpecs"]]
    assert names == metrics["onnx_int4"]["confusion_matrix"]["columns"]
    assert all(len(r["row"]) == len(names) for r in cm["rows"]) and len(cm["rows"]) == len(names)
    assert sum(map(sum, (r["row"] for r in cm["rows"]))) == sum(
        map(sum, metrics["onnx_int4"]["confusion_matrix"]["counts"])
    )


def test_tasks_ran_as_the_images_non_root_user(kfp_run):
    out, _ = kfp_run
    owners = {p.stat().st_uid for p in _task_dir(out, "train").rglob("*")}
    expected = 10001 if os.getuid() == 0 else os.getuid()
    assert owners == {expected}


def test_compiled_file_is_what_ran(kfp_run):
    """The YAML under the run folder is a normal compile output: `validate` accepts it."""
    out, _ = kfp_run
    proc = run_cli(str(ROOT / "pipeline.py"), "validate", "--target", "kfp", str(out / "pipeline.yaml"))
    assert proc.returncode == 0, proc.stderr


def _executor_output(out: Path, stage: str) -> dict:
    return json.loads((_task_dir(out, stage) / "executor_output.json").read_text())


@pytest.fixture(scope="module")
def kfp_unchanged(kfp_run, tmp_path_factory) -> tuple[Path, str, str]:
    first, _ = kfp_run
    promoted = _executor_output(first, "data_prep")["parameterValues"]["dataset_hash"]
    out = tmp_path_factory.mktemp("kfp-unchanged") / "run"
    proc = run_cli(
        str(ROOT / "pipeline.py"),
        "run",
        "--runner",
        "kfp-local",
        "--config",
        str(TINY),
        "--out",
        str(out),
        "--set",
        f"data.promoted_dataset_hash={promoted}",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return out, promoted, proc.stdout + proc.stderr


def test_changed_dataset_runs_train_and_is_promoted_in_kfp_metadata(kfp_run):
    out, _ = kfp_run
    dataset = artifacts.verify(_task_dir(out, "data_prep") / "dataset", "Dataset")
    assert _executor_output(out, "data_prep")["parameterValues"] == {
        "dataset_hash": dataset["content_hash"],
        "changed": "true",
    }
    s = summary(out)
    assert s["stages"]["train"]["status"] == "ok" and s["promoted"] is True
    meta = _executor_output(out, "evaluate")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    onnx = _task_dir(out, "onnx_build") / "onnx_model"
    assert meta["promoted"] is True
    assert meta["model_uri"] == str(onnx)
    assert meta["model_content_hash"] == artifacts.verify(onnx, "OnnxModel")["content_hash"]
    assert meta["dataset_hash"] == dataset["content_hash"]
    assert meta["base_model"] == "tiny-random:phi3"
    assert len(meta["config_hash"]) == 64 and len(meta["code_code_hash"]) == 64


def test_unchanged_dataset_skips_train_under_kfp_local(kfp_unchanged):
    out, promoted, log = kfp_unchanged
    s = summary(out)
    assert s["status"] == "skipped" and s["promoted"] is False
    assert "dataset unchanged since the promoted model" in s["reason"] and promoted in s["reason"]
    assert {n: st["status"] for n, st in s["stages"].items()} == {
        "data_prep": "ok",
        **{n: "skipped" for n in DAG_SPECS if n != "data_prep"},
    }
    assert _executor_output(out, "data_prep")["parameterValues"]["changed"] == "false"
    run = Path(s["kfp_run"])
    assert sorted(p.name for p in run.iterdir()) == ["data-prep"]  # KFP started no other task
    assert "(skipped: dataset unchanged" in log


@pytest.fixture(scope="module")
def kfp_tasks(tmp_path_factory) -> Path:
    """The two-task job (tests/multi_tasks.py) under KFP's own orchestrator."""
    tmp = tmp_path_factory.mktemp("kfp-tasks")
    (tmp / "multi.yaml").write_text(yaml.safe_dump(multi_config(tmp)))
    out = tmp / "run"
    proc = run_cli(
        str(ROOT / "pipeline.py"),
        *("run", "--runner", "kfp-local", "--config", str(tmp / "multi.yaml"), "--out", str(out)),
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return out


def test_the_two_task_dag_runs_under_kfp_local_as_it_runs_locally(kfp_tasks, multi):
    from pipeline import TASKS_DAG

    stages = summary(kfp_tasks)["stages"]
    assert list(stages) == [s.name for s in TASKS_DAG.expand(t.name for t in multi["cfg"].tasks)]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    task = Path(summary(kfp_tasks)["kfp_run"]) / k8s_name("evaluate_tasks")
    metrics = json.loads((task / "metrics" / "metrics.json").read_text())
    local = json.loads((multi["run"] / "evaluate_tasks" / "metrics" / "metrics.json").read_text())
    assert metrics["verdict"]["passed"] and set(metrics["tasks"]) == {"tone", "sentiment"}
    for name, t in metrics["tasks"].items():  # the same config and seeds: the same models
        assert t["switched"]["accuracy"] == local["tasks"][name]["switched"]["accuracy"], name
        assert t["merged"]["accuracy"] == local["tasks"][name]["merged"]["accuracy"], name
    served = task.parent / k8s_name("adapter_build") / "onnx_base"
    assert sorted(p.name for p in (served / "adapters").iterdir()) == ["sentiment.onnx_adapter", "tone.onnx_adapter"]
