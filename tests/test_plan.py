"""The task plan (engines/plan.py) is what every engine compiles: for each step, the image, the
resources, the retry policy, the environment, the secret, the mounts, the command line's flags and
the bound run parameters that each engine's compiled file states equal the plan's. Read back from
the files the engines wrote, for the default config on GPUs with a model registry, the two-task
config, and train on two nodes (the TrainJob path of KFP and Argo, AzureML's distribution)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

import engines.base  # noqa: F401 - the targets' settings typing, as every compiling process
from core.config import load_config
from engines import argo, azureml, kfp
from engines.plan import TaskPlan, plan_pipeline
from pipeline import dag_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REGISTRY = "targets.kfp.model_registry={url: 'https://model-registry.kubeflow.svc:8443'}"
CASES = {
    "gpu": ("default.yaml", ["runtime.device=cuda", REGISTRY]),
    "tasks": ("tasks.yaml", []),
    "nodes": ("phi3-mini.yaml", ["train.nodes=2", "train.gpus=4"]),
}
OUT = {"kfp": "pipeline.yaml", "argo": "workflow.yaml", "azureml": "azureml"}
ENGINES = {"kfp": kfp, "argo": argo, "azureml": azureml}


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request, tmp_path_factory):
    """``(cfg, dag, {engine: path})`` for one case."""
    name, overrides = CASES[request.param]
    cfg = load_config(ROOT / "configs" / name, overrides)
    dag, out = dag_for(cfg), tmp_path_factory.mktemp(request.param)
    return cfg, dag, {e: ENGINES[e].compile_pipeline(dag, cfg, out / OUT[e]) for e in ENGINES}


def _quantity(text) -> int:
    return int(str(text).removesuffix("Gi"))


def _flags(argv) -> list[str]:
    return [a for a in argv if isinstance(a, str) and a.startswith("--")]


def _trainjob(doc: dict) -> dict:
    """What a TrainJob states of its step (engines/trainjob.py)."""
    t = doc["spec"]["trainer"]
    per_node = t["resourcesPerNode"]["limits"]
    secrets = [e for e in t["env"] if "valueFrom" in e]
    pod = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = pod["template"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    return {
        "image": t["image"],
        "resources": (int(per_node["cpu"]), _quantity(per_node["memory"]), int(per_node.get("nvidia.com/gpu", 0))),
        "nodes": (t["numNodes"], t["numProcPerNode"]),
        "env": {e["name"]: e["value"] for e in t["env"] if "value" in e and e["name"] != "SLM_TRAINJOB_DIR"},
        "secret": _secret_ref(secrets[0]) if secrets else None,
        "mounts": {v["persistentVolumeClaim"]["claimName"]: mounts[v["name"]] for v in pod["volumes"]},
        "flags": _flags(t["command"] + t["args"]),
    }


def _secret_ref(env: dict) -> tuple:
    ref = env["valueFrom"]["secretKeyRef"]
    return (ref["name"], ref["key"], env["name"])


def _kfp_secret(s: dict) -> tuple:
    [pair] = s["keyToEnv"]
    return (s["secretName"], pair["secretKey"], pair["envVar"])


def kfp_facts(path: Path) -> dict[str, dict]:
    ir, platform = yaml.safe_load_all(path.read_text())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = {}
    for comp in [ir["root"], *ir["components"].values()]:
        tasks.update({t["taskInfo"]["name"]: t for t in comp.get("dag", {}).get("tasks", {}).values()})
    out = {}
    for name, task in tasks.items():
        label = ir["components"][task["componentRef"]["name"]].get("executorLabel")
        if label is None:
            continue  # the condition's group, not a step
        c, spec, retry = ir["deploymentSpec"]["executors"][label]["container"], k8s.get(label, {}), task["retryPolicy"]
        res = c["resources"]
        facts = {
            "image": c["image"],
            "resources": (
                int(res["resourceCpuLimit"]),
                _quantity(res["resourceMemoryLimit"]),
                int(res.get("accelerator", {}).get("resourceCount", 0)),
            ),
            "retry": (retry["maxRetryCount"], retry["backoffDuration"], retry["backoffMaxDuration"]),
            "env": {e["name"]: e["value"] for e in c["env"]},
            "secret": next((_kfp_secret(s) for s in spec.get("secretAsEnv", [])), None),
            "mounts": {m["constant"]: m["mountPath"] for m in spec.get("pvcMount", [])},
            "flags": [f for f in _flags(c["command"] + c["args"]) if f != kfp.EXECUTOR_INPUT_FLAG],
            "bound": sorted(task["inputs"].get("parameters", {})),
        }
        if c["command"][2] == "runtime.trainjob":  # the launcher: the nodes' facts are the TrainJob's
            facts["launcher"] = facts.pop("resources")
            facts.update(_trainjob(json.loads(c["args"][2])))
        out[name] = facts
    return out


def argo_facts(path: Path) -> dict[str, dict]:
    wf = yaml.safe_load(path.read_text())
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in wf["spec"].get("volumes", [])}
    out = {}
    for task in templates["main"]["dag"]["tasks"]:
        t = templates[task["template"]]
        bound = [p["name"] for p in task["arguments"]["parameters"] if "{{workflow.parameters." in p["value"]]
        if "dag" in t:  # train on several nodes: the TrainJob between stage-in and stage-out
            create = templates[t["dag"]["tasks"][1]["template"]]
            c = templates[t["dag"]["tasks"][0]["template"]]["container"]
            facts = {**_trainjob(yaml.safe_load(create["resource"]["manifest"])), "retry_strategy": create}
            small = c["resources"]["requests"]
            facts["launcher"] = (int(small["cpu"]), _quantity(small["memory"]), 0)
        else:
            c = t["container"]
            limits = c["resources"]["limits"]
            secrets = [e for e in c["env"] if "valueFrom" in e]
            facts = {
                "image": c["image"],
                "resources": (int(limits["cpu"]), _quantity(limits["memory"]), int(limits.get("nvidia.com/gpu", 0))),
                "env": {e["name"]: e["value"] for e in c["env"] if "value" in e},
                "secret": _secret_ref(secrets[0]) if secrets else None,
                "mounts": {claims[m["name"]]: m["mountPath"] for m in c.get("volumeMounts", [])},
                "flags": _flags(c["command"] + c["args"]),
                "retry_strategy": t,
            }
        rs = facts.pop("retry_strategy")["retryStrategy"]
        facts["retry"] = (int(rs["limit"]), rs["backoff"]["duration"], rs["backoff"]["cap"], rs.get("expression"))
        facts["bound"] = sorted(bound)
        out[task["name"]] = facts
    return out


def azureml_facts(path: Path) -> dict[str, dict]:
    from engines.azureml import HF_SECRET_REF_ENV, HF_VAULT_URL_ENV

    jobs = yaml.safe_load(path.read_text())["jobs"]
    out = {}
    for name, job in jobs.items():
        comp = yaml.safe_load((path.parent / job["component"]).read_text())
        env = dict(job["environment_variables"])
        secret = env.pop(HF_SECRET_REF_ENV, None)
        env.pop(HF_VAULT_URL_ENV, None)
        nodes = job.get("resources", {}).get("instance_count", 1)
        out[name] = {
            "image": comp["environment"]["image"],
            "compute": job["compute"].removeprefix("azureml:"),
            "nodes": (nodes, job.get("distribution", {}).get("process_count_per_instance", 1)),
            "env": env,
            "secret": secret,
            "flags": [f for f in _flags(comp["command"].split()) if f != "--model-uri"],
            "bound": sorted(k for k, v in job["inputs"].items() if v.get("path", "").startswith("${{parent.inputs.")),
        }
    return out


def _argo_plan(p: TaskPlan) -> dict:
    from core.artifacts import PARAMETERS_DIR_ENV
    from runtime.promotion import PROMOTION_FILE_ENV

    r = p.retry
    if p.multi_node:  # the TrainJob's nodes have the plan's env; a lost node is retried whatever the exit
        return {"env": dict(p.env), "retry": (r.limit, f"{r.backoff_seconds}s", "1h", None)}
    extra = {PARAMETERS_DIR_ENV: argo.PARAMS_DIR} if p.out_params else {}
    extra |= {PROMOTION_FILE_ENV: argo.PROMOTION_PATH} if p.promotes else {}
    expression = argo.retry_expression(r.fatal_exit_codes)
    return {"env": {**p.env, **extra}, "retry": (r.limit, f"{r.backoff_seconds}s", "1h", expression)}


def _expected(engine: str, p: TaskPlan, s) -> dict:
    """What ``engine``'s compiled file must state of the step, from its plan alone."""
    secret = p.secret and (p.secret.secret, p.secret.key, p.secret.env)
    res = (p.resources.cpu, p.resources.memory_gb, p.resources.gpu)
    facts = {"image": p.image, "env": dict(p.env), "secret": secret, "flags": _flags(p.argv)}
    facts["bound"] = sorted(param.name for param in p.params if param.run)
    nodes = (p.nodes, p.procs_per_node) if p.multi_node else (1, 1)
    if engine == "azureml":  # the secret: a Key Vault secret's name; no retry, no volume
        compute = s.compute_gpu if p.resources.gpu else s.compute_cpu
        return {**facts, "secret": p.secret and p.secret.secret, "compute": compute, "nodes": nodes}
    facts |= {"resources": res, "mounts": dict(p.mounts)}
    if engine == "argo":
        facts |= _argo_plan(p)
    else:
        facts["retry"] = (p.retry.limit, f"{p.retry.backoff_seconds}s", f"{p.retry.cap_seconds}s")
    if p.multi_node:
        lr = p.launcher_resources
        facts |= {"nodes": nodes, "launcher": (lr.cpu, lr.memory_gb, lr.gpu)}
    return facts


FACTS = {"kfp": kfp_facts, "argo": argo_facts, "azureml": azureml_facts}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_each_engine_compiles_each_step_as_its_plan_states(compiled, engine):
    cfg, dag, paths = compiled
    plans = plan_pipeline(dag, cfg, engine)
    facts = FACTS[engine](paths[engine])
    key = (lambda p: p.k8s_name) if engine == "argo" else (lambda p: p.name)
    assert sorted(facts) == sorted(key(p) for p in plans)
    for p in plans:
        assert facts[key(p)] == _expected(engine, p, plans.settings), f"{engine}: {p.name}"


def test_the_plan_holds_what_the_config_asks(compiled):
    """The engine-neutral facts are the same plan on every engine, and they follow the config."""
    cfg, dag, _ = compiled
    plans = {e: plan_pipeline(dag, cfg, e) for e in ENGINES}
    for e in ("argo", "azureml"):
        for a, b in zip(plans["kfp"], plans[e]):
            assert (a.image, a.argv, a.params, a.resources, a.nodes, a.wires) == (
                b.image,
                b.argv,
                b.params,
                b.resources,
                b.nodes,
                b.wires,
            )
    assert not plans["azureml"].tasks[0].mounts  # AzureML has no cache volume
    train = next(p for p in plans["kfp"] if p.spec.name == "train")
    assert (train.nodes, train.resources.gpu > 0) == (cfg.train.nodes or 1, cfg.runtime.device == "cuda")
    bound = {k for p in plans["kfp"] for k in p.bound_keys}
    assert bound == set(plans["kfp"].run_params)
    if cfg.tasks:  # a task's own LoRA rank is compiled in, not a run parameter
        ranks = {p.name: p.values()["train.lora.r"] for p in plans["kfp"] if p.spec.name == "train"}
        assert ranks == {f"train_{t.name}": t.lora.r for t in cfg.tasks}
        assert all("train.lora.r" not in p.bound_keys for p in plans["kfp"])
    promoted = [p for p in plans["kfp"] if p.promotes]
    assert len(promoted) == 1 and promoted[0].spec.name.startswith("evaluate")
    registry = plans["kfp"].settings.model_registry
    assert all(("SLM_MODEL_REGISTRY_URL" in p.env) == (p.promotes and registry is not None) for p in plans["kfp"])
