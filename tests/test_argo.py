"""The Argo Workflow: what a cluster run needs (artifact repository, unarchived outputs, the
model-cache volume, the service account, retries that skip deterministic failures), and
`pipeline.py validate` as strict as Argo's own schemas, plus the checks no schema makes
(image references, quantities, Kubernetes names), on all three targets.

The compiled-file basics (argv equivalence, wiring checks, broken references) are in
tests/test_compile.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from core.config import Config, load_config
from core.errors import UserError
from engines import argo, argo_schema, azureml, kfp
from engines.compile_common import CACHE_CLAIM, CACHE_ENV, CACHE_MOUNT, DETERMINISTIC_EXIT_CODES, settings
from engines.validate import validate_file
from pipeline import DAG, main
from runtime import promotion

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/default.yaml", "configs/phi3-mini.yaml"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def workflows(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = {}
    base = tmp_path_factory.mktemp("argo")
    for config in CONFIGS:
        cfg = load_config(REPO / config, ["targets.argo.schedule=0 3 * * 1"])
        path = argo.compile_pipeline(DAG, cfg, base / Path(config).stem / "workflow.yaml")
        out[config] = (path, yaml.safe_load(path.read_text()))
    return out


def _containers(wf: dict) -> list[dict]:
    spec = wf["spec"] if wf["kind"] == "Workflow" else wf["spec"]["workflowSpec"]
    return [t for t in spec["templates"] if "container" in t]


# ------------------------------------------------------------------------------------------
# What the compiled Workflow asks of the cluster


def test_defaults_are_what_manifests_create():
    s = settings(Config(), "argo")
    assert (s.namespace, s.service_account, s.cache_claim) == ("slm-pipeline", "slm-pipeline", CACHE_CLAIM)
    assert (s.artifact_repository_configmap, s.artifact_repository_key) == ("artifact-repositories", "slm-pipeline")


@pytest.mark.parametrize("config", CONFIGS)
def test_outputs_go_unarchived_to_the_named_artifact_repository(workflows, config):
    _, wf = workflows[config]
    assert wf["spec"]["artifactRepositoryRef"] == {"configMap": "artifact-repositories", "key": "slm-pipeline"}
    outputs = [a for t in _containers(wf) for a in t["outputs"]["artifacts"]]
    # the registry's outputs, plus the promotion record of the stage that applies the gate
    assert len(outputs) == sum(len(s.spec.outputs) + promotion.promotes(s.spec) for s in DAG)
    assert all(a["archive"] == {"none": {}} for a in outputs)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_stage_mounts_the_model_cache(workflows, config):
    _, wf = workflows[config]
    assert wf["spec"]["volumes"] == [{"name": "model-cache", "persistentVolumeClaim": {"claimName": CACHE_CLAIM}}]
    assert wf["spec"]["securityContext"] == {"fsGroup": 10001}  # the images' user may write the volume
    for tmpl in _containers(wf):
        c = tmpl["container"]
        assert c["volumeMounts"] == [{"name": "model-cache", "mountPath": CACHE_MOUNT}], tmpl["name"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert {k: env.get(k) for k in CACHE_ENV} == CACHE_ENV
        assert all(v.startswith(CACHE_MOUNT + "/") for v in CACHE_ENV.values())


def test_cache_claim_and_artifact_repository_are_settings(tmp_path):
    cfg = load_config(
        REPO / CONFIGS[0],
        [
            "targets.argo.cache_claim=team-cache",
            "targets.argo.artifact_repository_key=gcs-v2",
            "targets.argo.artifact_repository_configmap=repos",
        ],
    )
    wf = yaml.safe_load(argo.compile_pipeline(DAG, cfg, tmp_path / "a.yaml").read_text())
    assert wf["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "team-cache"
    assert wf["spec"]["artifactRepositoryRef"] == {"configMap": "repos", "key": "gcs-v2"}
    validate_file(tmp_path / "a.yaml", "argo")

    cfg = load_config(REPO / CONFIGS[0], ["targets.argo.cache_claim=null", "targets.argo.artifact_repository_key=null"])
    wf = yaml.safe_load(argo.compile_pipeline(DAG, cfg, tmp_path / "b.yaml").read_text())
    assert "volumes" not in wf["spec"] and "artifactRepositoryRef" not in wf["spec"]
    for tmpl in _containers(wf):
        assert "volumeMounts" not in tmpl["container"]
        assert not set(CACHE_ENV) & {e["name"] for e in tmpl["container"]["env"]}
    validate_file(tmp_path / "b.yaml", "argo")


@pytest.mark.parametrize("config", CONFIGS)
def test_namespace_and_service_account(workflows, config):
    _, wf = workflows[config]
    assert wf["metadata"]["namespace"] == "slm-pipeline"
    assert wf["spec"]["serviceAccountName"] == "slm-pipeline"


# ------------------------------------------------------------------------------------------
# Retries


@pytest.mark.parametrize("config", CONFIGS)
def test_retry_strategy_is_typed_as_argo_says_and_capped_not_deadlined(workflows, config):
    _, wf = workflows[config]
    for tmpl in _containers(wf):
        rs = tmpl["retryStrategy"]
        assert rs["limit"] == "2" and rs["retryPolicy"] == "Always"
        assert rs["backoff"] == {"duration": "60s", "factor": "2", "cap": "1h"}  # no maxDuration deadline
        assert rs["expression"] == argo.retry_expression()


class _ExprScope(dict):
    """Names the retry expression may use, as Argo's expression environment offers them."""

    def __missing__(self, key):
        raise NameError(f"the retry expression uses {key!r}, which Argo does not offer")


@pytest.mark.parametrize(
    "status,code,retried",
    [
        ("Failed", "1", True),  # a crash
        ("Failed", "137", True),  # OOM-killed
        ("Failed", "143", True),  # SIGTERM: preempted / spot node reclaimed
        ("Error", "-1", True),  # pod deleted, node lost: no exit code
        ("Failed", "2", False),  # bad input or config: the same again
        ("Failed", "3", False),  # the quality gate failed: the same again
    ],
)
def test_retry_expression_skips_deterministic_exit_codes(status, code, retried):
    """The expression uses only `or`, `and`, `==`, `not in`, list literals and Argo's asInt, whose
    meaning is the same in Argo's expression language and in Python, so Python evaluates it here;
    `lastRetry.exitCode` is a string in Argo (docs/retries.md), "-1" when unknown."""
    expr = argo.retry_expression()
    assert set(re.findall(r"lastRetry\.(\w+)", expr)) <= {"exitCode", "status", "duration", "message"}
    assert set(re.findall(r"\b([A-Za-z_]\w*)\(", expr)) <= {"asInt"}
    scope = _ExprScope(lastRetry=SimpleNamespace(status=status, exitCode=code), asInt=int)
    assert eval(expr, {"__builtins__": {}}, scope) is retried  # noqa: S307 - our own constant expression
    assert {int(c) for c in re.findall(r"\[([\d, ]+)\]", expr)[0].split(",")} == set(DETERMINISTIC_EXIT_CODES)


# ------------------------------------------------------------------------------------------
# Argo's own schemas, shipped unchanged


def test_shipped_schemas_are_the_upstream_files_and_derived_is_current():
    readme = (argo_schema.SCHEMA_DIR / "README.md").read_text()
    assert "argoproj/argo-workflows" in readme and "f016ad89eb269d282aec06dc491c29f396a38df4" in readme
    for name in ("schema.json", *argo_schema.CRD_FILES.values()):
        digest = hashlib.sha256((argo_schema.SCHEMA_DIR / name).read_bytes()).hexdigest()
        assert f"| `{name}` |" in readme and digest in readme, f"{name} differs from the upstream file the README lists"
    assert "Apache License" in (argo_schema.SCHEMA_DIR / "LICENSE").read_text()[:500]
    for kind in argo_schema.KINDS:
        doc = json.loads(argo_schema.derived_path(kind).read_text())
        assert (
            doc["sha256"]
            == hashlib.sha256((argo_schema.SCHEMA_DIR / argo_schema.CRD_FILES[kind]).read_bytes()).hexdigest()
        )
        assert doc["openAPIV3Schema"] == argo_schema._derive(kind), f"derived/ is stale for {kind}: --refresh"


@pytest.mark.parametrize("config", CONFIGS)
def test_compiled_workflow_and_cron_pass_both_argo_schemas(workflows, config):
    path, wf = workflows[config]
    assert argo_schema.schema_problems("Workflow", wf) == []
    cron = yaml.safe_load(path.with_name("workflow.cron.yaml").read_text())
    assert argo_schema.schema_problems("CronWorkflow", cron) == []


def test_accepts_argo_documented_shapes_of_the_features_we_use(tmp_path):
    """Not stricter than Argo: a hand-written Workflow in the shapes Argo's docs use for what we
    emit (string retry limit, expression, backoff cap, PVC volume, artifactRepositoryRef,
    archive none, depends, secret env, GPU resources, tolerations) validates."""
    wf = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": "docs-shape-",
            "namespace": "slm-pipeline",
            "labels": {"app.kubernetes.io/name": "x"},
        },
        "spec": {
            "entrypoint": "main",
            "serviceAccountName": "slm-pipeline",
            "artifactRepositoryRef": {"configMap": "artifact-repositories", "key": "slm-pipeline"},
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "slm-model-cache"}}],
            "arguments": {"parameters": [{"name": "steps", "value": "10"}]},
            "templates": [
                {
                    "name": "main",
                    "dag": {
                        "tasks": [
                            {
                                "name": "produce",
                                "template": "produce",
                                "arguments": {
                                    "parameters": [{"name": "steps", "value": "{{workflow.parameters.steps}}"}]
                                },
                            },
                            {
                                "name": "consume",
                                "template": "consume",
                                "depends": "produce",
                                "arguments": {
                                    "artifacts": [
                                        {"name": "model", "from": "{{tasks.produce.outputs.artifacts.model}}"}
                                    ]
                                },
                            },
                        ]
                    },
                },
                {
                    "name": "produce",
                    "inputs": {"parameters": [{"name": "steps"}]},
                    "retryStrategy": {
                        "limit": "10",
                        "retryPolicy": "Always",
                        "expression": "asInt(lastRetry.exitCode) > 1",
                        "backoff": {"duration": "1m", "factor": "2", "cap": "10m"},
                    },
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "container": {
                        "image": "python:3.11",
                        "command": ["python", "-c"],
                        "args": ["print({{inputs.parameters.steps}})"],
                        "env": [
                            {
                                "name": "HF_TOKEN",
                                "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}},
                            }
                        ],
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "1Gi"},
                            "limits": {"nvidia.com/gpu": "1", "memory": "1.5Gi"},
                        },
                        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                    },
                    "outputs": {"artifacts": [{"name": "model", "path": "/tmp/model", "archive": {"none": {}}}]},
                },
                {
                    "name": "consume",
                    "inputs": {"artifacts": [{"name": "model", "path": "/tmp/model"}]},
                    "container": {
                        "image": "registry.example.com:5000/team/consume@sha256:" + "0" * 64,
                        "command": ["ls", "/tmp/model"],
                    },
                },
            ],
        },
    }
    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump(wf))
    assert validate_file(path) == "argo"


# ------------------------------------------------------------------------------------------
# Broken files, through `pipeline.py validate`: one line per problem, exit 2, no traceback


def _argo_template(wf: dict, name: str) -> dict:
    return next(t for t in wf["spec"]["templates"] if t["name"] == name)


def _rename_train_template(wf):
    _argo_template(wf, "train")["name"] = "Train_Stage!"
    main_tmpl = _argo_template(wf, wf["spec"]["entrypoint"])
    next(t for t in main_tmpl["dag"]["tasks"] if t["template"] == "train")["template"] = "Train_Stage!"


ARGO_BAD = {
    "template name": (_rename_train_template, "'Train_Stage!' is not a valid Argo template/task name"),
    "memory quantity": (
        lambda wf: _argo_template(wf, "train")["container"]["resources"]["limits"].update(memory="lots"),
        "'lots' is not a Kubernetes quantity",
    ),
    "image reference": (
        lambda wf: _argo_template(wf, "merge")["container"].update(image="not a valid image ref"),
        "'not a valid image ref' is not a valid image reference",
    ),
    "integer retry limit": (
        lambda wf: _argo_template(wf, "merge")["retryStrategy"].update(limit=2),
        "retryStrategy.limit: 2 is not of type 'string' [Argo JSON schema]",
    ),
    "integer backoff factor": (
        lambda wf: _argo_template(wf, "merge")["retryStrategy"]["backoff"].update(factor=2),
        "backoff.factor: 2 is not of type 'string' [Argo JSON schema]",
    ),
    "unknown container key": (
        lambda wf: _argo_template(wf, "merge")["container"].update(imagePullPolicyy="Always"),
        "container: unknown key 'imagePullPolicyy' [Argo CRD + JSON schema]",
    ),
    "unknown spec key": (
        lambda wf: wf["spec"].update(artifactRepository={"configMap": "x"}),
        "spec: unknown key 'artifactRepository'",
    ),
    "two template types (CEL rule)": (
        lambda wf: _argo_template(wf, "merge").update(script={"image": "python:3.11", "source": "1"}),
        "spec.templates: template must have at most one template type [Argo CRD rule]",
    ),
    "depends and dependencies (CEL rule)": (
        lambda wf: next(t for t in _argo_template(wf, "main")["dag"]["tasks"] if t["name"] == "merge").update(
            depends="train"
        ),
        "cannot use both 'depends' and 'dependencies' [Argo CRD rule]",
    ),
    "artifact name": (
        lambda wf: _argo_template(wf, "train")["outputs"]["artifacts"][0].update(name="my adapter"),
        "'my adapter' is not a valid Argo artifact name",
    ),
    "generateName": (
        lambda wf: wf["metadata"].update(generateName="Phi3_Mini-"),
        "metadata.generateName: 'Phi3_Mini-'",
    ),
    "namespace": (lambda wf: wf["metadata"].update(namespace="SLM Pipeline"), "metadata.namespace: 'SLM Pipeline'"),
    "label value": (
        lambda wf: wf["metadata"]["labels"].update({"slm-pipeline/config": "a b"}),
        "is not a valid label value",
    ),
    "kind": (
        lambda wf: wf.update(kind="WorkflowTemplate"),
        "kind 'WorkflowTemplate' is not one of Workflow, CronWorkflow",
    ),
}


@pytest.mark.parametrize("case", sorted(ARGO_BAD))
def test_validate_cli_rejects_broken_argo_workflow(workflows, tmp_path, capsys, case):
    src, wf = workflows[CONFIGS[1]]
    fn, message = ARGO_BAD[case]
    bad = copy.deepcopy(wf)
    fn(bad)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    assert all(len(line) < 400 for line in err.splitlines())


def test_validate_cli_rejects_broken_cron_workflow(workflows, tmp_path, capsys):
    src, _ = workflows[CONFIGS[0]]
    cron = yaml.safe_load(src.with_name("workflow.cron.yaml").read_text())
    cron["metadata"]["name"] = "a" * 53  # Argo leaves room for the run's "-<unix time>"
    cron["spec"]["workflowSpec"]["templates"][0]["container"]["resources"]["requests"]["cpu"] = "two"
    cron["spec"]["schedule"] = "0 3 * * 1"  # a key Argo removed in favour of schedules
    path = tmp_path / "cron.yaml"
    path.write_text(yaml.safe_dump(cron))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "CronWorkflow: metadata.name: 'aaaa" in err and "at most 52 characters" in err
    assert "'two' is not a Kubernetes quantity" in err
    assert "spec: unknown key 'schedule'" in err


def test_validate_cli_rejects_bad_kfp_quantity_and_image(tmp_path, capsys):
    cfg = load_config(REPO / CONFIGS[0])
    src = kfp.compile_pipeline(DAG, cfg, tmp_path / "kfp" / "pipeline.yaml")
    for field, value, message in [
        ("resourceCpuLimit", "a-lot", "resources.resourceCpuLimit: 'a-lot' is not a Kubernetes quantity"),
        ("resourceMemoryRequest", "-4Gi", "resources.resourceMemoryRequest: '-4Gi' is not a Kubernetes quantity"),
        ("image", "not a valid image ref", "container.image: 'not a valid image ref' is not a valid image reference"),
    ]:
        docs = list(yaml.safe_load_all(src.read_text()))
        container = docs[0]["deploymentSpec"]["executors"]["exec-train"]["container"]
        (container if field == "image" else container["resources"])[field] = value
        bad = tmp_path / f"bad-{field}.yaml"
        bad.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        assert main(["validate", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert main(["validate", str(src)]) == 0


def test_validate_cli_rejects_bad_azureml_image(tmp_path, capsys):
    cfg = load_config(REPO / CONFIGS[0])
    out = tmp_path / "aml"
    azureml.compile_pipeline(DAG, cfg, out)
    comp = out / "components" / "merge.yml"
    tree = yaml.safe_load(comp.read_text())
    tree["environment"]["image"] = "not a valid image ref"
    comp.write_text(yaml.safe_dump(tree, sort_keys=False))
    assert main(["validate", "--target", "azureml", str(out)]) == 2
    err = capsys.readouterr().err
    assert "environment.image: 'not a valid image ref' is not a valid image reference" in err, err


@pytest.mark.parametrize(
    "image,ok",
    [
        ("ghcr.io/example/slm-pipeline/data_prep:0.1.0", True),
        ("localhost/slm-pipeline/train:0.1.0-cuda", True),
        ("python:3.11", True),
        ("registry.example.com:5000/a/b@sha256:" + "a" * 64, True),
        ("not a valid image ref", False),
        ("Upper/case", False),
        ("a//b:1", False),
        ("name:bad tag", False),
        ("repo@sha256:short", False),
    ],
)
def test_image_reference_grammar(image, ok):
    from engines.validate import image_problem

    assert (image_problem("x", image) is None) is ok


def test_schema_problems_rejects_unknown_kind():
    with pytest.raises(ValueError, match="no Argo schema"):
        argo_schema.schema_problems("WorkflowTemplate", {})
    with pytest.raises(UserError, match="no such file"):
        validate_file(REPO / "does-not-exist.yaml", "argo")


def test_names_too_long_for_argo_are_a_compile_error(tmp_path):
    cfg = load_config(REPO / CONFIGS[0], ["name=" + "x" * 50, "targets.argo.schedule=0 3 * * 1"])
    with pytest.raises(UserError, match="CronWorkflow's name 'x+-retrain' has 58 characters, Argo allows 52"):
        argo.compile_pipeline(DAG, cfg, tmp_path / "w.yaml")
    cfg = load_config(REPO / CONFIGS[0], ["name=" + "x" * 60])
    with pytest.raises(UserError, match="generateName"):
        argo.compile_pipeline(DAG, cfg, tmp_path / "w.yaml")
