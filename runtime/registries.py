"""Registering a promoted model where the engine keeps models, from inside the promoting stage.

The compile targets turn these on through the task's environment, so the command line stays
the same everywhere:

- AzureML (``engines/azureml.py``): ``SLM_AZUREML_MODEL_NAME`` names the model asset; the
  node also passes the model's datastore URI (``--model-uri``, a ``direct``-mode input bound to
  the same upstream output), so the asset points at the files the pipeline wrote instead of
  uploading a copy. The job's managed identity signs in (``ManagedIdentityCredential``); the
  workspace comes from AzureML's ``AZUREML_ARM_*`` variables.
- Kubeflow Model Registry (``targets.kfp.model_registry``): ``SLM_MODEL_REGISTRY_URL`` and
  ``SLM_MODEL_REGISTRY_MODEL``; the model's URI is the KFP artifact's. The client reads the
  pod's service-account token itself (``KF_PIPELINES_SA_TOKEN_PATH`` or the default path).

Metrics become tags (AzureML) or version metadata (Model Registry); the lineage becomes
properties. Only a stage whose gate passed gets here (``promotion.publish``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from core import io
from core.errors import UserError, first_line
from runtime.secrets import CLIENT_ID_ENVS

log = logging.getLogger("slm")

AZUREML_MODEL_ENV = "SLM_AZUREML_MODEL_NAME"
AZUREML_WORKSPACE_ENVS = ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME")
REGISTRY_URL_ENV = "SLM_MODEL_REGISTRY_URL"
REGISTRY_MODEL_ENV = "SLM_MODEL_REGISTRY_MODEL"
REGISTRY_AUTHOR_ENV = "SLM_MODEL_REGISTRY_AUTHOR"


def flat(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; None values left out (neither registry stores them)."""
    return {k: v for k, v in io.flat(tree, prefix).items() if v is not None}


def register(record: dict, model_uri: str | None, env: Mapping[str, str]) -> list[str]:
    """Every registry the environment names; returns one line per registration made."""
    done = []
    if env.get(AZUREML_MODEL_ENV):
        done.append(azureml_model(env[AZUREML_MODEL_ENV], model_uri, record, env))
    if env.get(REGISTRY_URL_ENV):
        done.append(
            kubeflow_model(
                env[REGISTRY_URL_ENV],
                env.get(REGISTRY_MODEL_ENV) or "slm-model",
                model_uri,
                record,
                env.get(REGISTRY_AUTHOR_ENV) or "slm-pipeline",
            )
        )
    return done


def azureml_model(name: str, uri: str | None, record: dict, env: Mapping[str, str]) -> str:
    """A ``custom_model`` asset (the next version of ``name``) at the pipeline's own output."""
    workspace = [env.get(k) for k in AZUREML_WORKSPACE_ENVS]
    where = f"AzureML model {name!r}"
    if not all(workspace):
        missing = [k for k in AZUREML_WORKSPACE_ENVS if not env.get(k)]
        raise UserError(f"cannot register {where}: not inside an AzureML job ({', '.join(missing)} unset)")
    if not uri or not uri.startswith("azureml:"):
        raise UserError(
            f"cannot register {where}: no azureml:// URI for the model (got {uri!r}); "
            "recompile the pipeline with this version (`pipeline.py compile --target azureml`)"
        )
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Model
    from azure.identity import ManagedIdentityCredential

    _quiet("azure", "msal")
    client_id = next((env[k] for k in CLIENT_ID_ENVS if env.get(k)), None)
    credential = ManagedIdentityCredential(client_id=client_id)
    try:
        ml = MLClient(credential, *workspace)
        created = ml.models.create_or_update(
            Model(
                name=name,
                path=uri,
                type="custom_model",
                description=_description(record),
                tags={k: str(v) for k, v in flat(record["metrics"]).items()},
                properties={k: str(v) for k, v in flat(record["lineage"]).items()},
            )
        )
    except Exception as e:  # noqa: BLE001 - one line, whatever the SDK raised
        raise UserError(
            f"cannot register {where} in workspace {workspace[2]!r}: {first_line(e, with_type=True)} (the job's "
            "identity needs write access to the workspace's models, e.g. 'AzureML Data Scientist')"
        ) from None
    finally:
        credential.close()
    return f"AzureML model {created.name}:{created.version} -> {uri}"


def kubeflow_model(url: str, name: str, uri: str | None, record: dict, author: str) -> str:
    """A model version named by the model's content hash: a retried or re-run task that promotes
    the same files finds it registered and adds nothing."""
    where = f"Kubeflow Model Registry {url}, model {name!r}"
    if not uri:
        raise UserError(f"cannot register in {where}: the task has no URI for the model artifact")
    import warnings

    from model_registry import ModelRegistry

    model = record["model"]
    version = (model.get("content_hash") or "")[:16] or record["promoted_at"]
    metadata = {
        **flat(record["metrics"]),
        **{f"lineage.{k}": v for k, v in flat(record["lineage"]).items()},
        "promoted_at": record["promoted_at"],
    }
    try:
        with warnings.catch_warnings():  # "User access token is missing": an in-cluster http registry needs none
            warnings.simplefilter("ignore")
            registry = ModelRegistry(url, author=author, is_secure=url.startswith("https://"), log_level=logging.ERROR)
        if registry.get_registered_model(name) and registry.get_model_version(name, version):
            return f"Kubeflow Model Registry {name} version {version} (already registered) -> {uri}"
        registry.register_model(
            name,
            uri,
            version=version,
            model_format_name="onnx",
            model_format_version="int4",
            version_description=_description(record),
            metadata=metadata,
        )
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot register in {where}: {first_line(e, with_type=True)}") from None
    return f"Kubeflow Model Registry {name} version {version} -> {uri}"


def _description(record: dict) -> str:
    lineage = record["lineage"]
    return (
        f"INT4 ONNX model of {lineage.get('base_model')}, promoted by the quality gate; "
        f"dataset {str(lineage.get('dataset_hash'))[:12]}"
    )


def _quiet(*loggers: str) -> None:
    for name in loggers:  # request logs and multi-line warnings: a failure is said once, below
        logging.getLogger(name).setLevel(logging.ERROR)
