"""The executor output a stage writes for KFP, read back by KFP's own code.

Runs without Docker: the executor input comes from ``kfp.local``'s own constructor over the
compiled evaluate component, the metrics from a real run of the tiny pipeline, and the
result goes through ``kfp.local``'s own reader (the one that failed with "task not found"
when no stage wrote an executor output).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from google.protobuf import json_format
from helpers import TINY
from kfp.local import executor_input_utils, executor_output_utils
from kfp.pipeline_spec import pipeline_spec_pb2

from core import artifacts
from core.config import load_config
from engines import kfp
from pipeline import DAG
from runtime import kfp_output


def _component_spec(tmp_path: Path, stage: str) -> pipeline_spec_pb2.ComponentSpec:
    path = kfp.compile_pipeline(DAG, load_config(TINY), tmp_path / "pipeline.yaml")
    ir = next(yaml.safe_load_all(path.read_text()))
    return json_format.ParseDict(ir["components"][f"comp-{stage.replace('_', '-')}"], pipeline_spec_pb2.ComponentSpec())


def test_evaluate_executor_output_is_read_by_kfp(tmp_path, tiny_run):
    spec = _component_spec(tmp_path, "evaluate")
    task_root = tmp_path / "task"
    executor_input = executor_input_utils.construct_executor_input(spec, {}, str(task_root), block_input_artifact=False)
    as_dict = executor_input_utils.executor_input_to_dict(executor_input, spec)
    metrics_dir = tiny_run / "evaluate" / "metrics"
    marker = artifacts.verify(metrics_dir, "Metrics")
    written = kfp_output.write(as_dict, {"metrics": marker}, ["metrics"], {"metrics": metrics_dir})

    outputs = executor_output_utils.get_outputs_for_task(executor_input, spec)
    assert set(outputs) == {"metrics", "metrics_confusion", "metrics_report"} == set(written["artifacts"])
    # report.html as KFP's HTML artifact: the UI renders the file at its URI
    assert outputs["metrics_report"].schema_title == "system.HTML"
    assert Path(outputs["metrics_report"].uri).read_bytes() == (metrics_dir / "report.html").read_bytes()
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    scalars = outputs["metrics"].metadata
    assert scalars["onnx_int4_accuracy"] == metrics["summary"]["onnx_int4"]["accuracy"]
    assert scalars["pytorch_accuracy"] == metrics["summary"]["pytorch"]["accuracy"]
    assert scalars["content_hash"] == marker["content_hash"]
    assert outputs["metrics"].uri == str(task_root / "metrics")

    cm = outputs["metrics_confusion"].metadata["confusionMatrix"]
    ours = metrics["onnx_int4"]["confusion_matrix"]
    labels = [a["displayName"] for a in cm["annotationSpecs"]]
    assert labels == ours["columns"] and labels[-1] == "(unparsed)"
    rows = [list(map(int, r["row"])) for r in cm["rows"]]
    assert rows[: len(ours["rows"])] == ours["counts"]
    assert rows[-1] == [0] * len(labels)  # nothing is truly "(unparsed)"
    assert json.loads(Path(outputs["metrics_confusion"].uri).read_text())["confusionMatrix"] == cm


def test_model_outputs_carry_the_seal(tmp_path, tiny_run):
    spec = _component_spec(tmp_path, "train")
    task_root = tmp_path / "task"
    executor_input = executor_input_utils.construct_executor_input(spec, {}, str(task_root), block_input_artifact=False)
    adapter = tiny_run / "train" / "adapter"
    marker = artifacts.verify(adapter, "Model")
    kfp_output.write(
        executor_input_utils.executor_input_to_dict(executor_input, spec), {"adapter": marker}, [], {"adapter": adapter}
    )
    outputs = executor_output_utils.get_outputs_for_task(executor_input, spec)
    assert outputs["adapter"].metadata["cache_key"] == marker["cache_key"]
    assert outputs["adapter"].metadata["files"] == len(marker["files"])


def test_cluster_uris_map_to_the_launchers_local_paths():
    assert kfp_output.local_path("minio://mlpipeline/v2/a/b") == Path("/minio/mlpipeline/v2/a/b")
    assert kfp_output.local_path("gs://bucket/x") == Path("/gcs/bucket/x")
    assert kfp_output.local_path("s3://bucket/x") == Path("/s3/bucket/x")
    assert kfp_output.local_path("/tmp/root/x") == Path("/tmp/root/x")


def test_data_prep_output_parameters_reach_kfp(tmp_path):
    """The real data_prep stage, given KFP's executor input: KFP's reader gets `changed` and
    `dataset_hash` (what the compiled dsl.If tests) and the dataset artifact."""
    from helpers import stage_cli

    spec = _component_spec(tmp_path, "data_prep")
    task_root = tmp_path / "task"
    executor_input = executor_input_utils.construct_executor_input(spec, {}, str(task_root), block_input_artifact=False)
    as_dict = executor_input_utils.executor_input_to_dict(executor_input, spec)
    dataset = task_root / "dataset"
    for promoted, changed in ((None, "true"), ("same", "false")):
        args = ["--dataset", str(dataset), "--data.max_rows", "300", "--kfp-executor-input", json.dumps(as_dict)]
        if promoted:
            args += ["--data.promoted_dataset_hash", artifacts.verify(dataset)["content_hash"]]
        proc = stage_cli("data_prep", *args)
        assert proc.returncode == 0, proc.stderr
        outputs = executor_output_utils.get_outputs_for_task(executor_input, spec)
        seal = artifacts.verify(dataset, "Dataset")
        assert outputs["changed"] == changed
        assert outputs["dataset_hash"] == seal["content_hash"]
        assert outputs["dataset"].metadata["content_hash"] == seal["content_hash"]


def test_promotion_metadata_carries_the_lineage(tmp_path, tiny_run):
    """What evaluate adds to its metrics on KFP after its gate passed, from the real seals."""
    from core.lineage import lineage_from_seals

    spec = _component_spec(tmp_path, "evaluate")
    executor_input = executor_input_utils.construct_executor_input(
        spec, {}, str(tmp_path / "task"), block_input_artifact=False
    )
    as_dict = executor_input_utils.executor_input_to_dict(executor_input, spec)
    as_dict["inputs"]["artifacts"] = {"onnx_model": {"artifacts": [{"uri": "minio://bucket/onnx_model"}]}}
    seals = {
        "dataset": artifacts.verify(tiny_run / "data_prep" / "dataset"),
        "model": artifacts.verify(tiny_run / "merge" / "model"),
        "onnx_model": artifacts.verify(tiny_run / "onnx_build" / "onnx_model"),
    }
    metrics_dir = tiny_run / "evaluate" / "metrics"
    params = artifacts.verify(metrics_dir)["params"]
    _, lineage = lineage_from_seals("evaluate", params, seals)
    kfp_output.write(
        as_dict,
        {"metrics": artifacts.verify(metrics_dir)},
        ["metrics"],
        {"metrics": metrics_dir},
        None,
        {"model_input": "onnx_model", "model_seal": seals["onnx_model"], "lineage": lineage},
    )
    meta = executor_output_utils.get_outputs_for_task(executor_input, spec)["metrics"].metadata
    assert meta["promoted"] is True and meta["model_uri"] == "minio://bucket/onnx_model"
    assert meta["dataset_hash"] == seals["dataset"]["content_hash"]
    assert meta["model_content_hash"] == seals["onnx_model"]["content_hash"]
    assert meta["base_model"] == "tiny-random:phi3"
    # the same config hash the local runner writes into promoted.json
    assert meta["config_hash"] == json.loads((tiny_run / "promoted.json").read_text())["lineage"]["config_hash"]
