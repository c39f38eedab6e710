"""A promoted model is registered where the engine keeps models, by the real clients.

The evaluate stage runs as its compiled task would: the environment and the extra arguments
come from the compiled pipeline (AzureML ``pipeline.yml``; KFP's IR, with the executor input
made by ``kfp.local``'s own constructor). It talks to loopback servers that record every
request (``tests/recorders.py``):

- AzureML: ``azure-ai-ml``'s ``MLClient`` over HTTPS, signed in by ``ManagedIdentityCredential``
  against an AzureML-style identity endpoint; the asset points at the pipeline's own output.
- Kubeflow Model Registry: the ``model-registry`` client; the version is the model's content
  hash, so promoting the same files again adds nothing.

A failed quality gate registers nothing anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import recorders
import yaml
from helpers import TINY, stage_cli

from core import artifacts
from core.config import load_config
from engines import azureml, kfp
from pipeline import DAG
from runtime import registries

SUB, RG, WSNAME = "00000000-0000-0000-0000-0000000000ee", "slm-rg", "slm-ws"
MSI_SECRET = "msi-CANARY-secret-77d0"
MODEL_URI = (
    f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WSNAME}/datastores/workspaceblobstore"
    "/paths/azureml/3f1c9a/onnx_model/"
)
KFP_URI = "minio://mlpipeline/v2/artifacts/slm/3f1c9a/onnx-build/onnx_model"


def _evaluate_argv(tiny_run: Path, tmp_path: Path, *settings: str) -> tuple[list[str], object]:
    cfg = load_config(TINY, list(settings))
    step = DAG["evaluate"]
    inputs = {name: str(tiny_run.joinpath(*src)) for name, src in step.wires.items()}
    argv = step.spec.argv(step.spec.params(cfg), inputs, {"metrics": str(tmp_path / "metrics")})
    return argv[3:], cfg


def _summary(tiny_run: Path) -> dict:
    return json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())["summary"]


@pytest.fixture
def workspace(tmp_path):
    """A loopback AzureML workspace and identity endpoint; yields (env for the job, recorder)."""
    ca, cert, key = recorders.make_tls(tmp_path)
    with (
        recorders.Recorder(recorders.msi_routes(MSI_SECRET)) as msi,
        recorders.Recorder(recorders.azureml_routes([{"status": "Running"}]), tls=(cert, key)) as mfe,
    ):
        env = {
            "AZUREML_DEV_URL_MFE": mfe.url,
            "REQUESTS_CA_BUNDLE": str(ca),
            "MSI_ENDPOINT": msi.url + "/msi/token",
            "MSI_SECRET": MSI_SECRET,
            "AZUREML_ARM_SUBSCRIPTION": SUB,
            "AZUREML_ARM_RESOURCEGROUP": RG,
            "AZUREML_ARM_WORKSPACE_NAME": WSNAME,
        }
        yield env, mfe


def _azureml_node(cfg, tmp_path: Path) -> tuple[dict, dict]:
    """The compiled evaluate node and component (what AzureML would run)."""
    out = azureml.compile_pipeline(DAG, cfg, tmp_path / "aml")
    node = yaml.safe_load(out.read_text())["jobs"]["evaluate"]
    component = yaml.safe_load((tmp_path / "aml" / "components" / "evaluate.yml").read_text())
    return node, component


@pytest.mark.parametrize("min_accuracy,promoted", [(0.0, True), (1.0, False)])
def test_azureml_registers_the_promoted_model_asset(tiny_run, tmp_path, workspace, min_accuracy, promoted):
    env, mfe = workspace
    argv, cfg = _evaluate_argv(
        tiny_run, tmp_path, f"evaluate.min_accuracy={min_accuracy}", "targets.azureml.model_name=tone-int4"
    )
    node, component = _azureml_node(cfg, tmp_path)
    # The compiled node: the model input once more, as its azureml:// URI, and the asset's name.
    assert node["inputs"]["onnx_model_uri"] == {
        "path": "${{parent.jobs.onnx_build.outputs.onnx_model}}",
        "mode": "direct",
    }
    assert component["inputs"]["onnx_model_uri"]["mode"] == "direct"
    assert "--model-uri ${{inputs.onnx_model_uri}}" in component["command"]
    job_env = node["environment_variables"]
    assert job_env[registries.AZUREML_MODEL_ENV] == "tone-int4"

    proc = stage_cli("evaluate", *argv, "--model-uri", MODEL_URI, env={**job_env, **env}, timeout=600)
    puts = mfe.find("PUT", recorders.WS + r"/models/.*")
    if not promoted:
        assert proc.returncode == 3 and "quality gate failed" in proc.stderr
        assert not [r for r in mfe.requests if "/models/" in r.path]
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r.path.split("/models/")[1] for r in puts] == ["tone-int4/versions/1"]
    body = puts[0].json["properties"]
    assert body["modelUri"] == MODEL_URI and body["modelType"] == "custom_model"
    summary = _summary(tiny_run)
    assert body["tags"]["onnx_int4.accuracy"] == str(summary["onnx_int4"]["accuracy"])
    assert body["tags"]["agreement"] == str(summary["agreement"])
    local = json.loads((tiny_run / "promoted.json").read_text())["lineage"]
    assert body["properties"]["dataset_hash"] == local["dataset_hash"]
    assert body["properties"]["config_hash"] == local["config_hash"]
    assert body["properties"]["base_model"] == "tiny-random:phi3"
    assert body["properties"]["code_version.code_hash"] == local["code_version"]["code_hash"]
    assert puts[0].headers["authorization"].startswith("Bearer ey")
    assert "registered: AzureML model tone-int4:1" in proc.stderr
    assert MSI_SECRET not in proc.stderr + proc.stdout + json.dumps(body)


def test_azureml_model_asset_can_be_turned_off(tmp_path):
    cfg = load_config(TINY, ["targets.azureml.register_model=false"])
    node, component = _azureml_node(cfg, tmp_path)
    assert "onnx_model_uri" not in node["inputs"] and "--model-uri" not in component["command"]
    assert registries.AZUREML_MODEL_ENV not in node["environment_variables"]


def test_azureml_registration_outside_a_job_is_one_line(tiny_run):
    record = json.loads((tiny_run / "promoted.json").read_text())
    with pytest.raises(registries.UserError, match="not inside an AzureML job"):
        registries.register(record, MODEL_URI, {registries.AZUREML_MODEL_ENV: "m"})
    env = {registries.AZUREML_MODEL_ENV: "m", **dict.fromkeys(registries.AZUREML_WORKSPACE_ENVS, "x")}
    with pytest.raises(registries.UserError, match="no azureml:// URI for the model.*recompile"):
        registries.register(record, "/mnt/azureml/inputs/onnx_model", env)


def _kfp_task(cfg, tmp_path: Path) -> tuple[dict, dict]:
    """The compiled evaluate executor's env, and the executor input kfp.local builds for it."""
    from google.protobuf import json_format
    from kfp.local import executor_input_utils
    from kfp.pipeline_spec import pipeline_spec_pb2

    path = kfp.compile_pipeline(DAG, cfg, tmp_path / "pipeline.yaml")
    ir = next(yaml.safe_load_all(path.read_text()))
    container = ir["deploymentSpec"]["executors"]["exec-evaluate"]["container"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    spec = json_format.ParseDict(ir["components"]["comp-evaluate"], pipeline_spec_pb2.ComponentSpec())
    executor_input = executor_input_utils.construct_executor_input(
        spec, {}, str(tmp_path / "task"), block_input_artifact=False
    )
    as_dict = executor_input_utils.executor_input_to_dict(executor_input, spec)
    as_dict["inputs"]["artifacts"] = {"onnx_model": {"artifacts": [{"uri": KFP_URI, "name": "onnx_model"}]}}
    return env, as_dict


@pytest.mark.parametrize("min_accuracy,promoted", [(0.0, True), (1.0, False)])
def test_kfp_registers_the_promoted_model_in_the_model_registry(tiny_run, tmp_path, min_accuracy, promoted):
    with recorders.Recorder(recorders.model_registry_routes()) as registry:
        argv, cfg = _evaluate_argv(
            tiny_run,
            tmp_path,
            f"evaluate.min_accuracy={min_accuracy}",
            f'targets.kfp.model_registry={{"url": "{registry.url}", "model_name": "tone-int4"}}',
        )
        task_env, executor_input = _kfp_task(cfg, tmp_path)
        assert task_env[registries.REGISTRY_URL_ENV] == registry.url
        assert task_env[registries.REGISTRY_MODEL_ENV] == "tone-int4"
        proc = stage_cli(
            "evaluate",
            *argv,
            "--kfp-executor-input",
            json.dumps(executor_input),
            env={**task_env, "KF_PIPELINES_SA_TOKEN_PATH": str(_token(tmp_path))},
            timeout=600,
        )
        api = recorders.MODEL_REGISTRY_API
        posts = {r.path.replace(api, ""): r.json for r in registry.requests if r.method == "POST"}
        if not promoted:
            assert proc.returncode == 3 and "quality gate failed" in proc.stderr
            assert not registry.requests
            return
        assert proc.returncode == 0, proc.stderr[-3000:]
        seal = artifacts.verify(tiny_run / "onnx_build" / "onnx_model", "OnnxModel")
        version = seal["content_hash"][:16]
        assert posts["/registered_models"]["name"] == "tone-int4"
        mv = posts["/model_versions"]
        assert mv["name"] == version and mv["author"] == "slm-pipeline"
        props = {
            k: next(x for key, x in v.items() if key.endswith("_value")) for k, v in mv["customProperties"].items()
        }
        summary = _summary(tiny_run)
        assert props["onnx_int4.accuracy"] == summary["onnx_int4"]["accuracy"]
        assert (
            props["lineage.dataset_hash"]
            == json.loads((tiny_run / "promoted.json").read_text())["lineage"]["dataset_hash"]
        )
        (art_path,) = [p for p in posts if p.endswith("/artifacts")]
        assert posts[art_path]["uri"] == KFP_URI and posts[art_path]["modelFormatName"] == "onnx"
        assert all(r.headers.get("authorization") == "Bearer sa-CANARY-token" for r in registry.requests)
        assert f"registered: Kubeflow Model Registry tone-int4 version {version} -> {KFP_URI}" in proc.stderr
        assert "sa-CANARY-token" not in proc.stderr + proc.stdout

        # A retried task promoting the same files finds the version and registers nothing more.
        record = json.loads((tiny_run / "promoted.json").read_text())
        before = len([r for r in registry.requests if r.method == "POST"])
        os.environ["KF_PIPELINES_SA_TOKEN_PATH"] = str(_token(tmp_path))
        try:
            line = registries.kubeflow_model(registry.url, "tone-int4", KFP_URI, record, "slm-pipeline")
        finally:
            del os.environ["KF_PIPELINES_SA_TOKEN_PATH"]
        assert "already registered" in line
        assert len([r for r in registry.requests if r.method == "POST"]) == before


def test_kfp_registry_unreachable_is_one_line(tiny_run, tmp_path):
    record = json.loads((tiny_run / "promoted.json").read_text())
    with pytest.raises(registries.UserError, match=r"cannot register in Kubeflow Model Registry http://127\.0\.0\.1:9"):
        registries.kubeflow_model("http://127.0.0.1:9", "m", KFP_URI, record, "a")


def _token(tmp_path: Path) -> Path:
    path = tmp_path / "sa-token"
    path.write_text("sa-CANARY-token")
    return path
