"""Compile the real DAG from the real configs for KFP, AzureML and Argo, and check it.

- every compiled file passes its strict validator (engine schema + reference checks);
- deliberately broken files (a dangling reference, a wrong type, a missing input) fail it;
- the command line of every task, placeholders resolved to local paths, is exactly the
  command line the local runner gives that stage: the YAML runs what the local run ran;
- no adapter names a stage: a new stage or a new stage parameter reaches all three;
- secrets appear only by reference.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from compiled_argv import TASK_ARGVS

from core.config import Config, DataConfig, EvaluateConfig, ImagesConfig, load_config
from core.errors import UserError
from core.params import StageParams
from core.spec import Pipeline, Port, Resources, StageSpec, Step
from engines import argo, azureml, kfp
from engines.compile_common import RUN_PARAMETERS, image_for, kfp_cron, param_name
from engines.local import stage_argv
from engines.validate import validate_file
from pipeline import DAG, main
from stages.registry import STAGES, MergeParams

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/default.yaml", "configs/phi3-mini.yaml"]
TARGETS = {"kfp": kfp, "azureml": azureml, "argo": argo}
OUT_NAME = {"kfp": "pipeline.yaml", "azureml": "azureml", "argo": "workflow.yaml"}
FAKE_TOKEN = "hf_FAKE_not_a_real_token_8c1f0e"
ROOT = "/runs/r1"

# azure-ai-ml's marshmallow schemas warn by the thousand on import; they are not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _compile(target: str, cfg: Config, out: Path, dag: Pipeline = DAG) -> Path:
    TARGETS[target].compile_pipeline(dag, cfg, out)
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``{(target, config): (path, cfg)}``, compiled with a fake HF_TOKEN in the environment."""
    base = tmp_path_factory.mktemp("compiled")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", FAKE_TOKEN)
        mp.setenv("HUGGING_FACE_HUB_TOKEN", FAKE_TOKEN)
        for config in CONFIGS:
            cfg = load_config(REPO / config)
            for target in TARGETS:
                path = base / Path(config).stem / OUT_NAME[target]
                out[(target, config)] = (_compile(target, cfg, path), cfg)
    return out


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


CASES = [(t, c) for c in CONFIGS for t in TARGETS]


# ------------------------------------------------------------------------------------------
# Valid, and the same command lines as the local runner


@pytest.mark.parametrize("target,config", CASES)
def test_compiled_file_validates(compiled, target, config):
    path, _ = compiled[(target, config)]
    assert validate_file(path, target) == target
    assert validate_file(path) == target  # the target is guessed from the file


@pytest.mark.parametrize("target,config", CASES)
def test_task_argv_equals_local_runner_argv(compiled, target, config):
    path, cfg = compiled[(target, config)]
    got = TASK_ARGVS[target](path, ROOT)
    assert sorted(got) == sorted(s.name for s in DAG)
    for s in DAG:
        expected = stage_argv(s, cfg, ROOT)
        assert expected[:3] == ["python", "-m", f"stages.{s.name}"]
        assert got[s.name] == expected, f"{target}/{s.name}: the compiled command differs from the local run"


def test_run_parameters_are_pipeline_parameters_on_every_engine(compiled):
    names = [param_name(k) for k in RUN_PARAMETERS]
    path, _ = compiled[("kfp", CONFIGS[1])]
    ir = next(yaml.safe_load_all(path.read_text()))
    assert sorted(ir["root"]["inputDefinitions"]["parameters"]) == sorted(names)
    assert ir["root"]["inputDefinitions"]["parameters"]["train_lora_r"]["parameterType"] == "NUMBER_INTEGER"
    assert ir["root"]["inputDefinitions"]["parameters"]["evaluate_min_accuracy"]["parameterType"] == "NUMBER_DOUBLE"
    path, _ = compiled[("azureml", CONFIGS[1])]
    job = yaml.safe_load((path / "pipeline.yml").read_text())
    assert sorted(job["inputs"]) == sorted(names)
    path, _ = compiled[("argo", CONFIGS[1])]
    wf = yaml.safe_load(path.read_text())
    assert [p["name"] for p in wf["spec"]["arguments"]["parameters"]] == names


def test_changing_a_run_parameter_changes_only_that_argument(compiled):
    """A pipeline parameter really reaches the stage's command line, on every engine."""
    cfg = load_config(REPO / CONFIGS[0], ["train.lora.r=48"])
    for target in TARGETS:
        path, _ = compiled[(target, CONFIGS[0])]
        tree_path = path / "pipeline.yml" if path.is_dir() else path
        text = tree_path.read_text()
        if target == "kfp":
            docs = list(yaml.safe_load_all(text))
            docs[0]["root"]["inputDefinitions"]["parameters"]["train_lora_r"]["defaultValue"] = 48
            text = yaml.safe_dump_all(docs)
        elif target == "azureml":
            tree = yaml.safe_load(text)
            tree["inputs"]["train_lora_r"] = 48
            text = yaml.safe_dump(tree)
        else:
            tree = yaml.safe_load(text)
            for p in tree["spec"]["arguments"]["parameters"]:
                if p["name"] == "train_lora_r":
                    p["value"] = "48"
            text = yaml.safe_dump(tree)
        tree_path_copy = tree_path.with_name("edited-" + tree_path.name)
        tree_path_copy.write_text(text)
        got = TASK_ARGVS[target](tree_path_copy, ROOT)
        assert got["train"] == stage_argv(DAG["train"], cfg, ROOT), target
        tree_path_copy.unlink()


# ------------------------------------------------------------------------------------------
# Images, resources, retries, caching, compute


def _kfp_docs(path):
    return list(yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("config", CONFIGS)
def test_kfp_tasks_carry_image_resources_retry_caching(compiled, config):
    path, cfg = compiled[("kfp", config)]
    ir, platform = _kfp_docs(path)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = {t["taskInfo"]["name"]: t for t in _kfp_tasks(ir).values()}
    for s in DAG:
        task = tasks[s.name]
        comp = ir["components"][task["componentRef"]["name"]]
        label = comp["executorLabel"]
        container = ir["deploymentSpec"]["executors"][label]["container"]
        res = s.spec.resources(cfg)
        assert container["image"] == image_for(s.spec, cfg)
        assert container["resources"]["resourceCpuRequest"] == str(res.cpu)
        assert container["resources"]["resourceMemoryRequest"] == f"{res.memory_gb}Gi"
        if res.gpu:
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert container["resources"]["accelerator"]["resourceCount"] == str(res.gpu)
        else:
            assert "accelerator" not in container["resources"]
        assert task["retryPolicy"]["maxRetryCount"] == 2
        assert task["cachingOptions"]["enableCache"] is True
        secrets = k8s.get(label, {}).get("secretAsEnv", [])
        if "model.base" in s.spec.params(cfg):
            assert secrets and secrets[0]["secretName"] == cfg.targets.get("kfp", {}).get("hf_token_secret", "hf-token")
            assert secrets[0]["keyToEnv"] == [{"envVar": "HF_TOKEN", "secretKey": "token"}]
        # Artifacts are typed: Dataset / Model / Metrics, and ClassificationMetrics next to Metrics.
        for port in s.spec.outputs:
            title = comp["outputDefinitions"]["artifacts"][port.name]["artifactType"]["schemaTitle"]
            assert (
                title
                == {
                    "Dataset": "system.Dataset",
                    "Model": "system.Model",
                    "OnnxModel": "system.Model",
                    "Metrics": "system.Metrics",
                }[port.type]
            )
            if port.type == "Metrics":
                cm = comp["outputDefinitions"]["artifacts"][port.name + "_confusion"]
                assert cm["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"


def test_kfp_runs_the_rest_of_the_dag_only_when_the_dataset_changed(compiled):
    """data_prep declares its output parameters; the steps after it sit in one dsl.If group
    that tests data_prep's `changed`, with the promoted hash as a pipeline parameter."""
    path, _ = compiled[("kfp", CONFIGS[0])]
    ir, _ = _kfp_docs(path)
    assert ir["components"]["comp-data-prep"]["outputDefinitions"]["parameters"] == {
        "changed": {"parameterType": "STRING"},
        "dataset_hash": {"parameterType": "STRING"},
    }
    root = ir["root"]["dag"]["tasks"]
    assert sorted(root) == ["data-prep", kfp.CONDITION_NAME]
    # A nested pipeline takes data_prep's `changed` as its input and holds one dsl.If on it.
    nested = root[kfp.CONDITION_NAME]
    assert nested["inputs"]["parameters"]["changed"]["taskOutputParameter"] == {
        "outputParameterKey": "changed",
        "producerTask": "data-prep",
    }
    assert nested["inputs"]["artifacts"]["data_prep_dataset"]["taskOutputArtifact"] == {
        "outputArtifactKey": "dataset",
        "producerTask": "data-prep",
    }
    (group,) = ir["components"][nested["componentRef"]["name"]]["dag"]["tasks"].values()
    assert group["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--changed'] == 'true'"
    inner = ir["components"][group["componentRef"]["name"]]["dag"]["tasks"]
    assert (
        sorted(t["taskInfo"]["name"] for t in inner.values())
        == sorted(DAG.gated())
        == ["evaluate", "merge", "onnx_build", "train"]
    )
    assert ir["root"]["inputDefinitions"]["parameters"]["data_promoted_dataset_hash"]["defaultValue"] == "null"
    assert root["data-prep"]["inputs"]["parameters"]["data_promoted_dataset_hash"] == {
        "componentInputParameter": "data_promoted_dataset_hash"
    }


def test_argo_gates_every_later_task_with_when(compiled):
    path, _ = compiled[("argo", CONFIGS[0])]
    spec = yaml.safe_load(path.read_text())["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    assert templates["data-prep"]["outputs"]["parameters"] == [
        {"name": "dataset_hash", "valueFrom": {"path": f"{argo.PARAMS_DIR}/dataset_hash"}},
        {"name": "changed", "valueFrom": {"path": f"{argo.PARAMS_DIR}/changed"}},
    ]
    assert {"name": "SLM_OUTPUT_PARAMETERS_DIR", "value": argo.PARAMS_DIR} in templates["data-prep"]["container"]["env"]
    tasks = {t["name"]: t for t in templates[argo.ENTRYPOINT]["dag"]["tasks"]}
    assert "when" not in tasks["data-prep"]
    for name in ("train", "merge", "onnx-build", "evaluate"):  # a skipped dependency counts as done in Argo
        assert tasks[name]["when"] == "{{tasks.data-prep.outputs.parameters.changed}} == true"
    assert {"name": "data_promoted_dataset_hash", "value": "null"} in spec["arguments"]["parameters"]
    # The promoting stage's record is an output artifact, beside the run's other outputs.
    evaluate = templates["evaluate"]
    assert {"name": "SLM_PROMOTION_FILE", "value": argo.PROMOTION_PATH} in evaluate["container"]["env"]
    assert {"name": "promoted", "path": argo.PROMOTION_PATH, "archive": {"none": {}}} in evaluate["outputs"][
        "artifacts"
    ]
    assert all(
        "SLM_PROMOTION_FILE" not in str(t.get("container", {}).get("env"))
        for n, t in templates.items()
        if n != "evaluate"
    )


def test_data_prep_writes_its_output_parameters_where_argo_reads_them(tmp_path):
    from helpers import stage_cli

    proc = stage_cli(
        "data_prep",
        "--dataset",
        str(tmp_path / "dataset"),
        "--data.max_rows",
        "300",
        env={"SLM_OUTPUT_PARAMETERS_DIR": str(tmp_path / "params")},
    )
    assert proc.returncode == 0, proc.stderr
    seal = json.loads((tmp_path / "dataset" / "_artifact.json").read_text())
    assert (tmp_path / "params" / "dataset_hash").read_text() == seal["content_hash"]
    assert (tmp_path / "params" / "changed").read_text() == "true"
    assert sorted(p.name for p in (tmp_path / "params").iterdir()) == ["changed", "dataset_hash"]


def test_gpu_stages_get_gpu_images_and_resources(compiled):
    path, cfg = compiled[("argo", "configs/phi3-mini.yaml")]
    wf = yaml.safe_load(path.read_text())
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    gpu_stages = [s.name for s in DAG if s.spec.uses_gpu(cfg)]
    assert gpu_stages, "phi3-mini runs on cuda: some stages must use a GPU"
    for s in DAG:
        c = templates[s.name.replace("_", "-")]["container"]
        assert c["image"] == image_for(s.spec, cfg)
        assert c["image"].endswith(cfg.images.gpu_tag_suffix) == (s.name in gpu_stages)
        assert ("nvidia.com/gpu" in c["resources"]["limits"]) == (s.name in gpu_stages)
        assert templates[s.name.replace("_", "-")]["retryStrategy"]["limit"] == "2"  # a string, as Argo's schema says
    job = yaml.safe_load((compiled[("azureml", "configs/phi3-mini.yaml")][0] / "pipeline.yml").read_text())
    for s in DAG:
        want = "azureml:gpu-a100" if s.name in gpu_stages else "azureml:cpu-cluster"
        assert job["jobs"][s.name]["compute"] == want


def test_image_naming():
    cfg = load_config(REPO / "configs/phi3-mini.yaml")
    assert image_for(STAGES["data_prep"], cfg) == "ghcr.io/example/slm-pipeline/data_prep:0.1.0"
    assert image_for(STAGES["train"], cfg) == "ghcr.io/example/slm-pipeline/train:0.1.0-cuda"
    assert image_for(STAGES["train"], Config()) == "localhost/slm-pipeline/train:0.1.0"


def test_azureml_is_portable_and_named_by_stage(compiled):
    path, cfg = compiled[("azureml", CONFIGS[0])]
    job = yaml.safe_load((path / "pipeline.yml").read_text())
    assert list(job["jobs"]) == [s.name for s in DAG]
    for s in DAG:
        node = job["jobs"][s.name]
        assert node["component"] == f"./components/{s.name}.yml"
        comp = yaml.safe_load((path / "components" / f"{s.name}.yml").read_text())
        assert "code" not in comp
        assert comp["environment"]["image"] == image_for(s.spec, cfg)
        for port in s.spec.outputs:
            assert (
                comp["outputs"][port.name]["type"]
                == {
                    "Dataset": "uri_folder",
                    "Model": "custom_model",
                    "OnnxModel": "custom_model",
                    "Metrics": "uri_folder",
                }[port.type]
            )
    for f in _files(path):
        assert str(REPO) not in f.read_text(), f"{f} holds an absolute path of this machine"


@pytest.mark.parametrize("config", CONFIGS)
def test_azureml_outputs_are_uploaded_not_mounted(compiled, config):
    """rw_mount (the default) hands the stage a mount point it cannot rename: every output is
    ``mode: upload`` on the component and on the node, and azure-ai-ml sends it that way."""
    from azure.ai.ml import load_job

    path, _ = compiled[("azureml", config)]
    tree = yaml.safe_load((path / "pipeline.yml").read_text())
    job = load_job(path / "pipeline.yml")
    assert job._validate().passed
    rest = job._to_rest_object().as_dict()["properties"]["jobs"]
    for s in DAG:
        comp = yaml.safe_load((path / "components" / f"{s.name}.yml").read_text())
        for port in s.spec.outputs:
            assert comp["outputs"][port.name]["mode"] == "upload"
            assert tree["jobs"][s.name]["outputs"][port.name] == {"mode": "upload"}
            assert job.jobs[s.name].outputs[port.name].mode == "upload"
            assert job.jobs[s.name].component.outputs[port.name].mode == "upload"
            assert rest[s.name]["outputs"][port.name]["mode"] == "Upload"


def test_azureml_nodes_name_the_key_vault_and_secret(tmp_path):
    """Stages that read the base model get HF_TOKEN_KEYVAULT_URL + _SECRET (references only)."""
    from runtime import secrets

    url = "https://slm-kv.vault.azure.net"
    cases = {
        "with vault": (
            [f"targets.azureml.key_vault_url={url}"],
            {secrets.URL_ENV: url, secrets.SECRET_ENV: "hf-token"},
        ),
        "no vault": ([], {secrets.SECRET_ENV: "hf-token"}),
        "no secret": ([f"targets.azureml.key_vault_url={url}", "targets.azureml.hf_token_secret=null"], {}),
    }
    for case, (sets, want) in cases.items():
        cfg = load_config(REPO / CONFIGS[1], sets)
        out = azureml.compile_pipeline(DAG, cfg, tmp_path / case.replace(" ", "-")).parent
        validate_file(out, "azureml")
        job = yaml.safe_load((out / "pipeline.yml").read_text())
        for s in DAG:
            env = job["jobs"][s.name]["environment_variables"]
            got = {k: v for k, v in env.items() if k.startswith("HF_TOKEN")}
            assert got == (want if "model.base" in s.spec.params(cfg) else {}), f"{case}: {s.name}"
    with pytest.raises(UserError, match=r"targets\.azureml\.key_vault_url: .*https URL"):
        azureml.compile_pipeline(
            DAG, load_config(REPO / CONFIGS[0], ["targets.azureml.key_vault_url=kv.vault.azure.net"]), tmp_path / "bad"
        )


# ------------------------------------------------------------------------------------------
# Secrets


def test_secret_value_never_in_compiled_files(compiled):
    for (target, config), (path, _) in compiled.items():
        for f in _files(path):
            text = f.read_text()
            assert FAKE_TOKEN not in text, f"{f}: the HF token value was inlined"
    kfp_text = compiled[("kfp", CONFIGS[0])][0].read_text()
    assert "secretName: hf-token" in kfp_text
    argo_text = compiled[("argo", CONFIGS[0])][0].read_text()
    assert "secretKeyRef" in argo_text and "name: hf-token" in argo_text


# ------------------------------------------------------------------------------------------
# Broken files are rejected


def _mutate_yaml(src: Path, dst: Path, fn, all_docs=False) -> Path:
    docs = list(yaml.safe_load_all(src.read_text()))
    fn(docs if all_docs else docs[0])
    dst.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return dst


def _kfp_tasks(ir) -> dict:
    """Every task, the root DAG's and those inside a dsl.If group (the steps behind the condition)."""
    out = {}
    for comp in [ir["root"], *ir["components"].values()]:
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def _kfp_task(ir, name):
    return _kfp_tasks(ir)[name]


KFP_BROKEN = {
    "dangling producer task": (
        lambda ir: _kfp_task(ir, "merge")["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"].update(
            producerTask="nope"
        ),
        "producer task 'nope' does not exist",
    ),
    "dangling componentRef": (
        lambda ir: _kfp_task(ir, "merge")["componentRef"].update(name="comp-nope"),
        "no component 'comp-nope'",
    ),
    "dangling executorLabel": (
        lambda ir: ir["components"]["comp-train"].update(executorLabel="exec-nope"),
        "no executor 'exec-nope'",
    ),
    "dangling output key": (
        lambda ir: _kfp_task(ir, "merge")["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"].update(
            outputArtifactKey="nope"
        ),
        "has no output artifact 'nope'",
    ),
    "wrong artifact type": (
        lambda ir: ir["components"]["comp-merge"]["inputDefinitions"]["artifacts"]["adapter"]["artifactType"].update(
            schemaTitle="system.Dataset"
        ),
        "expects system.Dataset, but train.adapter is system.Model",
    ),
    "wrong parameter type": (
        lambda ir: ir["root"]["inputDefinitions"]["parameters"]["train_lora_r"].update(parameterType="STRING"),
        "expects NUMBER_INTEGER",
    ),
    "bad proto field": (
        lambda ir: _kfp_task(ir, "train").update(retryPolicy={"maxRetryCount": "many"}),
        "PipelineSpec",
    ),
    "missing input": (
        lambda ir: _kfp_task(ir, "train")["inputs"]["artifacts"].pop("dataset"),
        "required input artifact 'dataset'",
    ),
    "undeclared placeholder": (
        lambda ir: ir["deploymentSpec"]["executors"]["exec-train"]["container"]["args"].append(
            "{{$.inputs.parameters['nope']}}"
        ),
        "placeholder inputs.parameters['nope']",
    ),
}


@pytest.mark.parametrize("case", sorted(KFP_BROKEN))
def test_kfp_validator_rejects_broken_file(compiled, tmp_path, case):
    src, _ = compiled[("kfp", CONFIGS[0])]
    fn, message = KFP_BROKEN[case]
    bad = _mutate_yaml(src, tmp_path / "bad.yaml", fn)
    with pytest.raises(UserError) as err:
        validate_file(bad, "kfp")
    assert message in str(err.value)


def test_kfp_validator_rejects_broken_platform_spec(compiled, tmp_path):
    src, _ = compiled[("kfp", CONFIGS[1])]

    def fn(docs):
        docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-nope"] = {}

    bad = _mutate_yaml(src, tmp_path / "bad.yaml", fn, all_docs=True)
    with pytest.raises(UserError, match="executor 'exec-nope' is not in deploymentSpec"):
        validate_file(bad, "kfp")


def _azure_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, fn) -> None:
    tree = yaml.safe_load(path.read_text())
    fn(tree)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))


AZURE_BROKEN = {
    "dangling job": (
        "pipeline.yml",
        lambda t: t["jobs"]["train"]["inputs"]["dataset"].update(path="${{parent.jobs.nope.outputs.dataset}}"),
        "names no job 'nope'",
    ),
    "dangling output": (
        "pipeline.yml",
        lambda t: t["jobs"]["merge"]["inputs"]["adapter"].update(path="${{parent.jobs.train.outputs.nope}}"),
        "job 'train' has no output 'nope'",
    ),
    "dangling pipeline input": (
        "pipeline.yml",
        lambda t: t["jobs"]["train"]["inputs"]["train_lora_r"].update(path="${{parent.inputs.nope}}"),
        "names no pipeline input 'nope'",
    ),
    "wrong type": (
        "components/train.yml",
        lambda c: c["inputs"]["dataset"].update(type="custom_model"),
        "expects custom_model, but data_prep.dataset is uri_folder",
    ),
    "missing input": ("pipeline.yml", lambda t: t["jobs"]["train"]["inputs"].pop("dataset"), "'dataset'"),
    "undeclared placeholder": (
        "components/merge.yml",
        lambda c: c.update(command=c["command"] + " --x ${{inputs.nope}}"),
        "${{inputs.nope}} is not a declared input",
    ),
}


@pytest.mark.parametrize("case", sorted(AZURE_BROKEN))
def test_azureml_validator_rejects_broken_file(compiled, tmp_path, case):
    src, _ = compiled[("azureml", CONFIGS[0])]
    bad = _azure_copy(src, tmp_path / "bad")
    file, fn, message = AZURE_BROKEN[case]
    _edit(bad / file, fn)
    with pytest.raises(UserError) as err:
        validate_file(bad, "azureml")
    assert message in str(err.value)


def _argo_task(wf, name):
    main_tmpl = next(t for t in wf["spec"]["templates"] if t["name"] == wf["spec"]["entrypoint"])
    return next(t for t in main_tmpl["dag"]["tasks"] if t["name"] == name)


ARGO_BROKEN = {
    "dangling template": (lambda wf: _argo_task(wf, "merge").update(template="nope"), "template name 'nope' undefined"),
    "dangling from task": (
        lambda wf: _argo_task(wf, "train")["arguments"]["artifacts"][0].update(
            **{"from": "{{tasks.nope.outputs.artifacts.dataset}}"}
        ),
        "missing dependency 'nope' for artifact 'dataset'",
    ),
    "dangling from output": (
        lambda wf: _argo_task(wf, "train")["arguments"]["artifacts"][0].update(
            **{"from": "{{tasks.data-prep.outputs.artifacts.nope}}"}
        ),
        "task 'data-prep' has no output artifact 'nope'",
    ),
    "dangling dependency": (
        lambda wf: _argo_task(wf, "train").update(dependencies=["data-prep", "nope"]),
        "dependency 'nope' not defined",
    ),
    "dependency cycle": (
        lambda wf: _argo_task(wf, "data-prep").update(dependencies=["merge"]),
        "dependency cycle data-prep -> merge -> train -> data-prep",
    ),
    "wrong type": (
        lambda wf: _argo_task(wf, "train").update(dependencies="data-prep"),
        "'data-prep' is not of type 'array'",
    ),
    "unknown key": (lambda wf: _argo_task(wf, "train").update(tempalte="train"), "unknown key"),
    "missing input artifact": (
        lambda wf: _argo_task(wf, "train")["arguments"].pop("artifacts"),
        "templates.main.dag.tasks.train: inputs.artifacts.dataset was not supplied",
    ),
    "missing input parameter": (
        lambda wf: _argo_task(wf, "train")["arguments"]["parameters"].pop(0),
        "templates.main.dag.tasks.train: inputs.parameters.model_base was not supplied",
    ),
    "undefined workflow parameter": (
        lambda wf: wf["spec"]["arguments"]["parameters"].pop(0),
        "names no workflow parameter",
    ),
}


@pytest.mark.parametrize("case", sorted(ARGO_BROKEN))
def test_argo_validator_rejects_broken_file(compiled, tmp_path, case):
    src, _ = compiled[("argo", CONFIGS[0])]
    fn, message = ARGO_BROKEN[case]
    bad = _mutate_yaml(src, tmp_path / "bad.yaml", fn)
    with pytest.raises(UserError) as err:
        validate_file(bad, "argo")
    assert message in str(err.value)


def test_validate_cli_reports_problems(compiled, tmp_path, capsys):
    src, _ = compiled[("argo", CONFIGS[0])]
    bad = _mutate_yaml(src, tmp_path / "bad.yaml", ARGO_BROKEN["dangling template"][0])
    assert main(["validate", str(bad)]) == 2
    assert "template name 'nope' undefined" in capsys.readouterr().err
    assert main(["validate", "--target", "argo", str(src)]) == 0
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("a: [1, 2\n")
    assert main(["validate", "--target", "kfp", str(garbage)]) == 2


# ------------------------------------------------------------------------------------------
# The adapters read the registry: new stages and parameters appear without touching them


def test_adapters_never_name_a_stage():
    for module in ("kfp", "kfp_local", "azureml", "argo", "compile_common", "validate"):
        source = (REPO / "engines" / f"{module}.py").read_text()
        for name in STAGES:
            assert not re.search(rf"['\"]{name}['\"]", source), f"engines/{module}.py names stage {name!r}"


class ReportParams(StageParams):
    evaluate: EvaluateConfig
    images: ImagesConfig  # a section no stage read before: new parameters


class WiderMergeParams(MergeParams):
    data: DataConfig


def test_new_stage_and_new_parameter_reach_every_target(tmp_path):
    report = StageSpec(
        name="report",
        summary="Render the metrics as a model card.",
        inputs=(Port("metrics", "Metrics"), Port("model", "Model")),
        outputs=(Port("card", "Dataset"),),
        view=ReportParams,
        cpu=Resources(cpu=1, memory_gb=2),
    )
    wider_merge = StageSpec(**{**STAGES["merge"].__dict__, "view": WiderMergeParams})
    dag = Pipeline(
        name="slm-finetune-extended",
        steps=(
            *(s if s.name != "merge" else Step(wider_merge, s.wires) for s in DAG.steps),
            Step(report, {"metrics": "evaluate.metrics", "model": "merge.model"}),
        ),
    )
    cfg = load_config(REPO / "configs/phi3-mini.yaml")
    for target in TARGETS:
        path = _compile(target, cfg, tmp_path / target / OUT_NAME[target], dag)
        validate_file(path, target)
        got = TASK_ARGVS[target](path, ROOT)
        assert sorted(got) == sorted(s.name for s in dag)
        for s in dag:
            assert got[s.name] == stage_argv(s, cfg, ROOT), f"{target}/{s.name}"
        assert "--images.registry" in got["report"] and "--data.path" in got["merge"]


# ------------------------------------------------------------------------------------------
# Settings, schedules, the CLI


def test_target_settings_are_typed():
    # at load time, whatever the command (tests/test_cluster.py checks the CLI commands)
    with pytest.raises(UserError, match=r"targets\.kfp\.retrys: unknown key"):
        load_config(REPO / CONFIGS[0], ["targets.kfp.retrys=3"])
    with pytest.raises(UserError, match=r"targets\.argo\.schedule: .*5-field cron"):
        load_config(REPO / CONFIGS[0], ["targets.argo.schedule=0 3 * *"])


def test_kfp_cron_has_seconds_field():
    assert kfp_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert kfp_cron("*/15 * * * *") == "0 */15 * * * *"


def test_schedules_are_native_objects(tmp_path):
    sched = ["targets.kfp.schedule=0 3 * * 1", "targets.azureml.schedule=0 3 * * 1", "targets.argo.schedule=0 3 * * 1"]
    cfg = load_config(REPO / CONFIGS[0], sched)
    kfp_path = kfp.compile_pipeline(DAG, cfg, tmp_path / "kfp" / "pipeline.yaml")
    body = json.loads(kfp_path.with_name("pipeline.recurring-run.json").read_text())
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"

    azureml.compile_pipeline(DAG, cfg, tmp_path / "aml")
    from azure.ai.ml.entities._load_functions import load_schedule

    schedule = load_schedule(tmp_path / "aml" / "schedule.yml")
    assert schedule.trigger.expression == "0 3 * * 1"
    validate_file(tmp_path / "aml", "azureml")

    wf = argo.compile_pipeline(DAG, cfg, tmp_path / "argo" / "workflow.yaml")
    cron = wf.with_name("workflow.cron.yaml")
    assert yaml.safe_load(cron.read_text())["spec"]["schedules"] == ["0 3 * * 1"]
    assert validate_file(cron, "argo") == "argo"
    assert validate_file(cron) == "argo"


def test_cli_compile_writes_where_asked(tmp_path, capsys):
    for target, name in OUT_NAME.items():
        out = tmp_path / name
        assert (
            main(
                [
                    "compile",
                    "--target",
                    target,
                    "--config",
                    str(REPO / CONFIGS[0]),
                    "--out",
                    str(out),
                    "--set",
                    "train.max_steps=7",
                ]
            )
            == 0
        )
        assert validate_file(out, target) == target
        got = TASK_ARGVS[target](out, ROOT)
        assert got["train"][got["train"].index("--train.max_steps") + 1] == "7"


def test_recompiling_without_schedule_removes_stale_schedule_files(tmp_path):
    with_schedule = load_config(REPO / CONFIGS[0], [f"targets.{t}.schedule=0 3 * * 1" for t in TARGETS])
    plain = load_config(REPO / CONFIGS[0])
    sidecars = {"kfp": "pipeline.recurring-run.json", "azureml": "azureml/schedule.yml", "argo": "workflow.cron.yaml"}
    for target in TARGETS:
        out = tmp_path / OUT_NAME[target]
        TARGETS[target].compile_pipeline(DAG, with_schedule, out)
        assert (tmp_path / sidecars[target]).is_file()
        TARGETS[target].compile_pipeline(DAG, plain, out)
        assert not (tmp_path / sidecars[target]).exists(), target
