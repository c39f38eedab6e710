"""manifests/: every object parses into the Kubernetes client's typed model with no field
lost (a typo would be dropped, so it fails), and names match what the compiled pipelines use."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client

from components.common.config import load_config
from targets.compile_common import settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = [(p.name, i, d) for p in sorted((ROOT / "manifests").glob("*.yaml"))
        for i, d in enumerate(yaml.safe_load_all(p.read_text())) if d]


def typed(doc: dict):
    group, _, ver = doc["apiVersion"].rpartition("/")
    prefix = "V1" if ver == "v1" else ver.capitalize()
    return client.ApiClient()._ApiClient__deserialize(doc, prefix + doc["kind"])


@pytest.mark.parametrize("name,index,doc", DOCS, ids=[f"{n}#{i}" for n, i, _ in DOCS])
def test_manifest_is_a_valid_kubernetes_object(name, index, doc):
    obj = typed(doc)
    assert client.ApiClient().sanitize_for_serialization(obj) == doc, f"{name}: a field is unknown or mistyped"
    assert obj.metadata.name


def test_names_match_the_compiled_pipelines():
    by_kind = {(d["kind"], d["metadata"]["name"]): d for _, _, d in DOCS}
    cfg = load_config(ROOT / "configs" / "phi3-mini.yaml")
    kfp, argo = settings(cfg, "kfp"), settings(cfg, "argo")
    secret = by_kind[("Secret", kfp.hf_token_secret)]
    assert kfp.hf_token_key in secret["stringData"] and secret["stringData"][kfp.hf_token_key] == ""
    assert ("Namespace", argo.namespace) in by_kind
    assert ("ServiceAccount", argo.service_account) in by_kind
    assert secret["metadata"]["namespace"] == argo.namespace
