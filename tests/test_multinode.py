"""train.nodes: data parallel over several machines, on CPU (gloo) with the tiny Phi-3.

The local runner's two-node run (two torchrun agents meeting through c10d on 127.0.0.1) trains the
adapter of the one-node two-process run, bit for bit; after node 1 is lost mid-run (its agent and rank
SIGKILLed, as a preempted machine), the re-run resumes from rank 0's checkpoint to that adapter again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import stage_cli

TEMPLATE = "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"
TRAIN = (
    *("--model.base", "tiny-random:phi3", "--train.max_steps", "12", "--train.batch_size", "4"),
    *("--train.max_seq_len", "64", "--train.checkpoint_every", "4", "--train.log_every", "2"),
    *("--runtime.threads", "1", "--train.lora.r", "8", "--train.lora.modules_to_save", "[embed_tokens,lm_head]"),
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("multinode") / "dataset"
    proc = stage_cli(
        "data_prep",
        *("--dataset", str(out), "--model.base", "tiny-random:phi3", "--data.max_rows", "120"),
        *("--data.prompt_format", "template", "--data.text_template", TEMPLATE),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def train(dataset, adapter, *flags, env=None):
    return stage_cli("train", "--dataset", str(dataset), "--adapter", str(adapter), *TRAIN, *flags, env=env)


def weights(adapter):
    return (adapter / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def one_node(dataset, tmp_path_factory):
    """The reference: one node, two processes (torchrun --standalone)."""
    out = tmp_path_factory.mktemp("one-node") / "adapter"
    proc = train(dataset, out, "--train.gpus", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["ranks"] == 2
    return out


def test_two_nodes_train_the_two_process_adapter_and_resume_after_a_lost_node(dataset, one_node, tmp_path):
    two_nodes = tmp_path / "two-nodes"
    proc = train(dataset, two_nodes, "--train.nodes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--rdzv-backend=c10d" in proc.stderr and "node 1: torchrun agent pid" in proc.stderr
    assert weights(two_nodes) == weights(one_node)
    metrics = json.loads((two_nodes / "metrics.json").read_text())
    assert (metrics["ranks"], metrics["nodes"], metrics["resumed_from_step"]) == (2, 2, 0)

    # Node 1 (rank 1 and its torchrun agent) is SIGKILLed after step 6; rank 0 checkpointed at step 4.
    lost = tmp_path / "lost-node"
    proc = train(dataset, lost, "--train.nodes", "2", env={"SLM_FAULT": "train.step_6", "SLM_FAULT_RANK": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]  # transient: the engines retry it
    assert "a re-run resumes from the last checkpoint" in proc.stderr.splitlines()[-1]
    assert not lost.exists()  # nothing that could pass for an adapter
    assert json.loads((tmp_path / "lost-node.checkpoints" / "latest" / "meta.json").read_text())["step"] == 4
    # Ranks that do not share the checkpoint folder (node-local outputs) refuse to resume apart.
    codes, logs = engine_ranks(dataset, [lost, tmp_path / "elsewhere"])
    assert codes == [2, 2], "\n".join(log[-2000:] for log in logs)
    assert all("storage every node sees" in log.splitlines()[-1] for log in logs)
    proc = train(dataset, lost, "--train.nodes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from the checkpoint at step 4" in proc.stderr
    assert weights(lost) == weights(one_node)
    assert json.loads((lost / "metrics.json").read_text())["resumed_from_step"] == 4


def engine_ranks(dataset, adapters):
    """Start one stage process per rank as AzureML's PyTorch distribution does (``len(adapters)``
    instances x 1 process), rank r writing to ``adapters[r]``; (exit codes, stderr logs)."""
    import socket
    import subprocess
    import sys

    from helpers import ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, out in enumerate(adapters):
        argv = [sys.executable, "-m", "stages.train", "--dataset", str(dataset), "--adapter", str(out), *TRAIN]
        argv += ["--train.nodes", str(len(adapters))]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.update({"WORLD_SIZE": str(len(adapters)), "NODE_RANK": str(rank), "RANK": str(rank), "LOCAL_RANK": "0"})
        procs.append(
            subprocess.Popen([*argv, "--train.nodes", str(len(adapters))], cwd=ROOT, env=env, stderr=-1, text=True)
        )
    logs = [p.communicate(timeout=600)[1] for p in procs]
    return [p.returncode for p in procs], logs


def test_azureml_ranks_join_from_the_environment(dataset, one_node, tmp_path):
    """AzureML's PyTorch distribution on 2 instances x 1 process: it starts every rank as a stage process
    with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, RANK and LOCAL_RANK; they share the output
    location, which only rank 0 writes."""
    out = tmp_path / "adapter"
    codes, logs = engine_ranks(dataset, [out, out])
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert "torchrun" not in logs[0]  # the engine started the ranks
    assert "node 0 writes the outputs" in logs[1]
    assert weights(out) == weights(one_node)


@pytest.mark.parametrize("env", [{"PET_NODE_RANK": "1"}, {"NODE_RANK": "1", "RANK": "3"}])
def test_only_node_0_writes_the_outputs(env, tmp_path):
    """Kubeflow Trainer's node 1, or AzureML's rank 3 on node 1: the stage runs, the output location
    (shared by every node) is left alone, node 0's temporary beside it included."""
    out = tmp_path / "dataset"
    theirs = tmp_path / ".dataset.tmp-1"  # node 0's unfinished output, on the shared volume
    theirs.mkdir()
    proc = stage_cli(
        "data_prep",
        *("--dataset", str(out), "--model.base", "tiny-random:phi3", "--data.max_rows", "40"),
        *("--data.prompt_format", "template", "--data.text_template", TEMPLATE),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "node 0 writes the outputs" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dataset.tmp-1"]


# ---------------------------------------------------------------------------------------
# The engines: phi3-mini with train.nodes: 2, train.gpus: 4


@pytest.fixture(scope="module")
def multi_node(tmp_path_factory):
    """``{target: compiled path}`` and the config."""
    from helpers import ROOT

    import engines.base  # noqa: F401 - the targets' settings typing, as every compiling process
    from core.config import load_config
    from engines import argo, azureml, kfp

    cfg = load_config(ROOT / "configs" / "phi3-mini.yaml", ["train.nodes=2", "train.gpus=4"])
    out = tmp_path_factory.mktemp("compiled")
    paths = {
        "kfp": kfp.compile_pipeline(DAG(), cfg, out / "pipeline.yaml"),
        "argo": argo.compile_pipeline(DAG(), cfg, out / "workflow.yaml"),
        "azureml": azureml.compile_pipeline(DAG(), cfg, out / "azureml"),
    }
    return paths, cfg


def DAG():
    from pipeline import DAG as dag

    return dag


def _kfp_trainjob(path):
    import yaml

    ir = next(yaml.safe_load_all(path.read_text()))
    container = ir["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert container["command"] + container["args"][:2] == ["python", "-m", "runtime.trainjob", "run", "--manifest"]
    assert "resourceAcceleratorLimit" not in str(container.get("resources"))  # the launcher needs no GPU
    return json.loads(container["args"][2]), container["args"][3:]


def _argo_trainjob(path):
    import yaml

    wf = yaml.safe_load(path.read_text())
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    main = next(t for t in templates["main"]["dag"]["tasks"] if t["name"] == "train")
    nested = templates[main["template"]]["dag"]["tasks"]
    assert [(t["name"], t.get("depends") or t.get("dependencies")) for t in nested] == [
        ("stage-in", None),
        ("trainjob", ["stage-in"]),
        ("stage-out", ["trainjob"]),
    ]
    resource = templates[nested[1]["template"]]["resource"]
    assert resource["action"] == "create" and resource["setOwnerReference"] is True
    assert resource["successCondition"].startswith("status.conditions.0.type == Complete")
    assert resource["failureCondition"].startswith("status.conditions.0.type == Failed")
    return yaml.safe_load(resource["manifest"]), wf


def _check_trainjob(doc, cfg, job_dir):
    from engines import trainjob
    from engines.compile_common import image_for
    from stages.registry import STAGES

    assert trainjob.problems(doc) == []
    spec = STAGES["train"]
    t = doc["spec"]["trainer"]
    assert (doc["apiVersion"], doc["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert doc["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert (t["numNodes"], t["numProcPerNode"]) == (2, 4)
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert t["image"] == image_for(spec, cfg)
    assert t["command"] == ["python", "-m", "stages.train"]
    assert t["args"][:4] == ["--dataset", "$(SLM_TRAINJOB_DIR)/dataset", "--adapter", "$(SLM_TRAINJOB_DIR)/adapter"]
    assert {"name": "SLM_TRAINJOB_DIR", "value": job_dir} in t["env"]
    patch = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "slm-model-cache"


def test_kfp_launches_a_trainjob_that_passes_the_crd(multi_node):
    from runtime.trainjob import _flags, with_values

    paths, cfg = multi_node
    doc, args = _kfp_trainjob(paths["kfp"])
    _check_trainjob(doc, cfg, "/cache/trainjobs/TRAINJOB")
    flags = _flags(args)
    assert (flags["inputs"], flags["outputs"]) == ("dataset", "adapter")
    assert flags["train.lora.r"] == "{{$.inputs.parameters['train_lora_r']}}"  # the run's value, put in at launch
    run = with_values(doc, {"train.lora.r": "32"}, "phi3-mini-tone-train-a1b2c")
    _check_trainjob(run, cfg, "/cache/trainjobs/phi3-mini-tone-train-a1b2c")
    assert run["metadata"]["name"] == "phi3-mini-tone-train-a1b2c" and "generateName" not in run["metadata"]
    assert run["spec"]["trainer"]["args"][run["spec"]["trainer"]["args"].index("--train.lora.r") + 1] == "32"


def test_argo_creates_the_trainjob_in_a_resource_template(multi_node):
    from engines import argo_schema

    paths, cfg = multi_node
    doc, wf = _argo_trainjob(paths["argo"])
    _check_trainjob(doc, cfg, "/cache/trainjobs/{{workflow.uid}}")
    args = doc["spec"]["trainer"]["args"]
    assert args[args.index("--train.lora.r") + 1] == "{{inputs.parameters.train_lora_r}}"
    assert argo_schema.schema_problems("Workflow", wf) == []


def test_a_trainjob_with_an_unknown_key_or_a_wrong_type_fails_the_crd(multi_node):
    from core.errors import UserError
    from engines import trainjob

    doc, _ = _kfp_trainjob(multi_node[0]["kfp"])
    bad = json.loads(json.dumps(doc))
    bad["spec"]["trainer"]["gpus"] = 4
    assert trainjob.problems(bad) == ["spec.trainer: unknown key(s) gpus"]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["trainer"]["numNodes"] = "2"
    assert trainjob.problems(bad) == ["spec.trainer.numNodes: '2' is not of type 'integer'"]
    bad = json.loads(json.dumps(doc))
    bad["metadata"] = {"name": "Train_1"}
    assert "RFC 1035" in trainjob.problems(bad)[0]
    with pytest.raises(UserError, match="unknown key"):
        trainjob.check({**doc, "spek": {}})


def test_azureml_distributes_the_train_node(multi_node):
    import yaml
    from azure.ai.ml import load_job

    path = multi_node[0]["azureml"].parent  # compile returns its pipeline.yml
    node = yaml.safe_load((path / "pipeline.yml").read_text())["jobs"]["train"]
    assert node["distribution"] == {"process_count_per_instance": 4, "type": "pytorch"}
    assert node["resources"]["instance_count"] == 2
    job = load_job(path / "pipeline.yml")
    assert job._validate().passed
    train = job.jobs["train"]
    assert (train.distribution.process_count_per_instance, train.resources.instance_count) == (4, 2)
    for other in ("data_prep", "merge"):  # one machine each, as before
        assert "distribution" not in yaml.safe_load((path / "pipeline.yml").read_text())["jobs"][other]


def test_the_trainer_schemas_are_the_upstream_files():
    import hashlib
    import re

    from engines.trainjob import SCHEMA_DIR

    readme = (SCHEMA_DIR / "README.md").read_text()
    table = dict(re.findall(r"\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|", readme))
    assert len(table) == 4 and (SCHEMA_DIR / "LICENSE").is_file()
    for name, digest in table.items():
        assert hashlib.sha256((SCHEMA_DIR / name).read_bytes()).hexdigest() == digest, name


def test_the_launcher_moves_only_sealed_artifacts(dataset, tmp_path):
    """Argo's stage-in and stage-out steps (and KFP's launcher) through the job folder: a job folder
    whose node 0 never sealed the adapter gives no output."""
    from helpers import run_cli

    job = tmp_path / "job"
    proc = run_cli("-m", "runtime.trainjob", "stage-in", "--dataset", str(dataset), "--job-dir", str(job))
    assert proc.returncode == 0, proc.stderr
    assert (job / "dataset" / "_artifact.json").is_file()
    (job / "adapter").mkdir()  # what a lost node 0 leaves: no seal
    (job / "adapter" / "adapter_model.safetensors").write_bytes(b"partial")
    out = tmp_path / "out"
    proc = run_cli("-m", "runtime.trainjob", "stage-out", "--adapter", str(out), "--job-dir", str(job))
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().startswith("error: [trainjob]") and len(proc.stderr.strip().splitlines()) == 1


def test_the_kfp_launcher_hands_node_0s_sealed_adapter_to_kfp(one_node, tmp_path):
    """After the TrainJob: the adapter from the job folder, seal included, at the task's output path, and
    an executor output that KFP's own reader takes (the next task's input)."""
    import shutil

    import yaml
    from google.protobuf import json_format
    from helpers import TINY
    from kfp.local import executor_input_utils, executor_output_utils
    from kfp.pipeline_spec import pipeline_spec_pb2

    import engines.base  # noqa: F401
    from core import artifacts
    from core.config import load_config
    from engines import kfp
    from runtime import trainjob

    cfg = load_config(TINY, ["train.nodes=2"])
    ir = next(yaml.safe_load_all(kfp.compile_pipeline(DAG(), cfg, tmp_path / "pipeline.yaml").read_text()))
    spec = json_format.ParseDict(ir["components"]["comp-train"], pipeline_spec_pb2.ComponentSpec())
    task_root = tmp_path / "task"
    executor_input = executor_input_utils.construct_executor_input(spec, {}, str(task_root), block_input_artifact=False)
    as_dict = executor_input_utils.executor_input_to_dict(executor_input, spec)
    job = tmp_path / "job"
    shutil.copytree(one_node, job / "adapter")  # what node 0 sealed there
    out = Path(as_dict["outputs"]["artifacts"]["adapter"]["artifacts"][0]["uri"])
    trainjob.finish({"adapter": out}, job, json.dumps(as_dict))
    assert artifacts.verify(out, "Model")["content_hash"] == artifacts.verify(one_node, "Model")["content_hash"]
    assert not job.exists()
    outputs = executor_output_utils.get_outputs_for_task(executor_input, spec)
    assert outputs["adapter"].metadata["cache_key"] == artifacts.verify(one_node)["cache_key"]


def test_local_nodes_on_one_gpu_machine_get_their_own_gpus(monkeypatch):
    """Two local "nodes" of 2 GPUs on a 4-GPU machine: each agent sees its own two, as separate
    machines would (their ranks count local ranks, hence GPUs, from 0)."""
    from stages.train.distributed import _gpus_per_agent

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert _gpus_per_agent("cuda", 2, 2) == [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    assert _gpus_per_agent("cuda", 4, 1) == [{}]  # one node: torchrun --standalone sees them all
    assert _gpus_per_agent("cpu", 1, 2) == [{}, {}]


@pytest.mark.parametrize("target", ["kfp", "argo", "azureml"])
def test_validate_accepts_the_multi_node_files(multi_node, target):
    """`pipeline.py validate` agrees with the engines' own checks on what compile wrote for 2 nodes."""
    from engines.validate import validate_file

    paths, _ = multi_node
    validate_file(str(paths[target]), target, strict=False)
