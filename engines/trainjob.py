"""A stage on several nodes as a Kubeflow Trainer v2 TrainJob: what KFP's launcher task and Argo's
``resource`` template create (docs/multi-node.md has the data path).

The TrainJob (``trainer.kubeflow.org/v1alpha1``) names the stock ``torch-distributed``
ClusterTrainingRuntime and sets ``numNodes`` (``train.nodes``), ``numProcPerNode`` (``train.gpus``),
``resourcesPerNode`` (the stage's per-node request, its GPUs included), the stage's image and its own
command line. The controller starts the nodes with torchrun's ``PET_*`` rendezvous set; each node runs
the stage, which starts torchrun (core/ranks.py). The nodes read the dataset from, and node 0 writes the
sealed adapter to, a job folder on the model-cache volume (``$(SLM_TRAINJOB_DIR)``, which Kubernetes
expands in the args from the container's env): the engines' own artifacts do not reach a TrainJob's pods.

Every compiled TrainJob is checked against the TrainJob CRD's ``openAPIV3Schema``
(schemas/kubeflow-trainer/), unknown keys rejected, as a strict API server would.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from core.errors import UserError

from .compile_common import CACHE_MOUNT, GPU_RESOURCE, k8s_name
from .crd import strict
from .plan import Param, TaskPlan

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
API_VERSION, KIND = f"{GROUP}/{VERSION}", "TrainJob"
RUNTIME = (
    "torch-distributed"  # the stock ClusterTrainingRuntime (schemas/kubeflow-trainer/torch_distributed-runtime.yaml)
)
NODE = "node"  # its replicated job's and container's name
MANAGER = "slm-pipeline"  # runtimePatches' owner
CACHE_VOLUME = "model-cache"

# The job folder: the nodes' dataset and adapter, on the cache volume. JOB_TOKEN in its path is the
# TrainJob's name (KFP's launcher sets it) or the workflow's uid (Argo, at compile time).
JOB_DIR_ENV = "SLM_TRAINJOB_DIR"
JOB_ROOT = f"{CACHE_MOUNT}/trainjobs"
JOB_TOKEN = "TRAINJOB"
SCHEMA_DIR = Path(__file__).parent / "schemas" / "kubeflow-trainer"
CRD_FILE = "trainer.kubeflow.org_trainjobs.yaml"

# A TrainJob's status: a condition of type Complete or Failed (status "True") once its JobSet ends.
COMPLETE, FAILED = "Complete", "Failed"


def job_argv(plan: TaskPlan, param: Callable[[Param], str] | None = None) -> list[str]:
    """The stage's command line on every node, its inputs and outputs in the job folder; ``param``:
    the engine's tag for a parameter, or None for the config's values."""
    where = f"$({JOB_DIR_ENV})"
    if param is None:  # values: a null the stage defaults to null too is no flag (StageSpec.argv)
        spec = plan.spec
        paths = {p.name: f"{where}/{p.name}" for p in (*spec.inputs, *spec.outputs)}
        return spec.argv(plan.values(), paths, paths)
    return plan.render_argv(param, lambda port: f"{where}/{port}", lambda port: f"{where}/{port}")


def manifest(plan: TaskPlan, s, argv: list[str], job_dir: str) -> dict:
    """The TrainJob for the step ``plan``; ``s``: the engine's settings (the GPU toleration)."""
    if not plan.mounts:
        raise UserError(
            f"{plan.spec.name}.nodes > 1 needs the cache volume every node mounts (the job folder and the "
            "checkpoints): set the engine's cache_claim to a ReadWriteMany PVC"
        )
    res = plan.resources
    quantities: dict[str, Any] = {"cpu": str(res.cpu), "memory": f"{res.memory_gb}Gi"}
    if res.gpu:
        quantities[GPU_RESOURCE] = str(res.gpu)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in {**plan.env, JOB_DIR_ENV: job_dir}.items()]
    if plan.secret:
        ref = {"name": plan.secret.secret, "key": plan.secret.key, "optional": plan.secret.optional}
        env.append({"name": plan.secret.env, "valueFrom": {"secretKeyRef": ref}})
    trainer = {
        "image": plan.image,
        "command": argv[:3],
        "args": argv[3:],
        "env": env,
        "numNodes": plan.nodes,
        "numProcPerNode": plan.procs_per_node,
        "resourcesPerNode": {"requests": quantities, "limits": dict(quantities)},
    }
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "generateName": generate_name(plan.config_name, plan.spec.name),
            "labels": {
                "app.kubernetes.io/name": "slm-pipeline",
                "slm-pipeline/config": k8s_name(plan.config_name)[:63],
            },
        },
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": RUNTIME},
            "trainer": trainer,
        },
    }
    replicated = {"name": NODE, "template": {"spec": {"template": {"spec": _pod_patch(plan, s)}}}}
    doc["spec"]["runtimePatches"] = [
        {"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}}}
    ]
    check(doc)
    return doc


def _pod_patch(plan: TaskPlan, s) -> dict:
    """The cache volume (and its mount, writable for the images' group) and the GPU toleration."""
    from .docker import IMAGE_GID

    [(claim, path)] = plan.mounts.items()
    pod: dict[str, Any] = {
        "volumes": [{"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}],
        "containers": [{"name": NODE, "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": path}]}],
        "securityContext": {"fsGroup": IMAGE_GID},
    }
    if plan.resources.gpu and s.gpu_toleration:
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return pod


def generate_name(config_name: str, stage: str) -> str:
    """``<config>-<stage>-``: RFC 1035 as the CRD's rule on the name asks, short enough for the 5
    characters the API server adds (63 in all)."""
    base = re.sub(r"^[^a-z]+", "", k8s_name(f"{config_name}-{stage}"))[:52].rstrip("-") or "train"
    return base + "-"


# ---------------------------------------------------------------------------------------
# The CRD's schema, strict


@lru_cache(maxsize=1)
def _validator():
    import yaml
    from jsonschema import Draft7Validator

    crd = yaml.load((SCHEMA_DIR / CRD_FILE).read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", None))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema = version["schema"]["openAPIV3Schema"]
    strict(schema)
    return Draft7Validator(schema)


NAME_RULE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # the CRD's CEL rule on metadata.name


def problems(doc: dict) -> list[str]:
    """What the API server would refuse in a TrainJob: its schema, and the CRD's rules on the name."""
    out = []
    for err in sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        if err.validator == "additionalProperties":
            unknown = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            out.append(f"{where}: unknown key(s) {', '.join(unknown)}")
        else:
            out.append(f"{where}: {err.message}")
    meta = doc.get("metadata") or {}
    name = meta.get("name") or (meta.get("generateName", "") + "abcde")
    if not (NAME_RULE.match(name) and len(name) <= 63):
        out.append(f"metadata: name {name!r} must be an RFC 1035 label of at most 63 characters")
    return out


def check(doc: dict) -> None:
    found = problems(doc)
    if found:
        raise UserError(f"the compiled TrainJob does not pass the Trainer CRD's schema: {'; '.join(found)}")
