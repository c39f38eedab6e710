"""Azure Machine Learning: the DAG as a pipeline job of command components (azure-ai-ml 1.35).

``compile_pipeline(dag, cfg, DIR)`` writes

    DIR/stages/<stage>.yml   one command component per stage (az ml component create --file)
    DIR/pipeline.yml             the pipeline job; nodes reference the component files
    DIR/schedule.yml             only with targets.azureml.schedule: a cron JobSchedule

Each component: typed inputs and outputs (``uri_folder`` / ``custom_model`` per the artifact
contract), one typed input per stage parameter, the stage's image as its environment, and
the stage's own command line. Outputs are ``mode: upload`` (on the component and on each
node): the stage gets a local folder, seals it by renaming, and AzureML uploads it after the
stage exits. (The default ``rw_mount`` hands over a mount point, which cannot be renamed; the
artifact contract copes with that too: ``core/artifacts.py`` commits in place,
marker last.) Nodes that read the base model get the Key Vault references of the Hugging Face
token (``runtime/secrets.py`` reads it in the stage). There is no ``code:``: the
image holds the repository at /app, so the output is portable. Nodes are named after their
stages and run on the GPU cluster when the stage uses a GPU, else on the CPU cluster
(``targets.azureml.compute_*``).
"""

from __future__ import annotations

import inspect
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import field_validator

from core import names
from core.config import Config, describe, encode
from core.errors import UserError
from core.spec import ARTIFACT_TYPES, Pipeline, StageSpec
from runtime import promotion, registries, secrets

from .base import RunStatus, Target
from .compile_common import (
    STAGE_ENV,
    WORKDIR,
    EngineSettings,
    bound_run_keys,
    check_names,
    image_for,
    needs_hf_token,
    param_name,
    pipeline_signature,
    run_parameters,
    settings,
    task_params,
    value_kind,
)
from .validate import check_azureml

logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)

SCHEMAS = {
    "component": "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json",
    "pipeline": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json",
    "schedule": "https://azuremlschemas.azureedge.net/latest/schedule.schema.json",
}
_KIND_TYPES = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "str": "string",
    "list": "string",
    "dict": "string",
    "null": "string",
}
_PY_TYPES = {"integer": int, "number": float, "boolean": bool, "string": str}
# The env vars that name the workspace Key Vault and the secret in it that holds the Hugging
# Face token; runtime/secrets.py reads them in the stage (the job's managed identity).
HF_SECRET_REF_ENV = secrets.SECRET_ENV  # HF_TOKEN_KEYVAULT_SECRET
HF_VAULT_URL_ENV = secrets.URL_ENV  # HF_TOKEN_KEYVAULT_URL
# Outputs are uploaded after the stage, not mounted (a mounted folder cannot be renamed).
OUTPUT_MODE = "upload"
# The promoting node also gets its model input as a URI (``direct`` mode: AzureML passes the
# azureml:// location instead of mounting it), to register the model asset there.
URI_SUFFIX = "_uri"


def registers_model(spec: StageSpec, cfg: Config) -> str | None:
    """The model asset a promoting stage registers (runtime/registries.py), or None."""
    s = settings(cfg, "azureml")
    if not (s.register_model and promotion.promotes(spec)):
        return None
    return s.model_name or param_name(cfg.name)


def model_port(spec: StageSpec) -> str:
    return promotion.model_port(spec)


def azure_value(value: Any) -> Any:
    """A parameter value as an AzureML input: numbers and booleans typed, the rest as the
    string the stage receives on its command line."""
    kind = value_kind(value)
    return value if kind in ("int", "float", "bool") else encode(value)


class _Ref:
    """A ``${{inputs.x}}`` placeholder, quoted for the shell when its value is a string."""

    def __init__(self, text: str, quote: bool):
        self.text, self.quote = text, quote

    def shell(self) -> str:
        return f"'{self.text}'" if self.quote else self.text


def command_line(spec: StageSpec, cfg: Config) -> str:
    params = task_params(spec, cfg)
    argv = spec.argv(
        {
            k: _Ref(f"${{{{inputs.{param_name(k)}}}}}", _KIND_TYPES[value_kind(v)] == "string")
            for k, v in params.items()
        },
        {p.name: _Ref(f"${{{{inputs.{p.name}}}}}", False) for p in spec.inputs},
        {p.name: _Ref(f"${{{{outputs.{p.name}}}}}", False) for p in spec.outputs},
    )
    if registers_model(spec, cfg):
        argv += ["--model-uri", _Ref(f"${{{{inputs.{model_port(spec)}{URI_SUFFIX}}}}}", False)]
    # No code upload: the job starts in AzureML's own working folder, so go to the repo first
    # (relative paths in the config, such as data.path, are relative to it).
    return f"cd {WORKDIR} && " + " ".join(a.shell() if isinstance(a, _Ref) else shlex.quote(a) for a in argv)


def make_component(spec: StageSpec, cfg: Config, name: str | None = None):
    """The stage as a CommandComponent; ``name``: the step's (a task's steps share a stage)."""
    from azure.ai.ml import Input, Output
    from azure.ai.ml.entities import CommandComponent, Environment

    inputs: dict[str, Any] = {
        p.name: Input(type=ARTIFACT_TYPES[p.type]["azureml"], description=p.description or None) for p in spec.inputs
    }
    if registers_model(spec, cfg):
        port = next(p for p in spec.inputs if p.name == model_port(spec))
        inputs[port.name + URI_SUFFIX] = Input(
            type=ARTIFACT_TYPES[port.type]["azureml"],
            mode="direct",
            description=f"where {port.name} lies: the model asset points there",
        )
    for key, value in task_params(spec, cfg).items():
        if inputs.get(param_name(key)):
            raise UserError(f"{spec.name}: parameter {key!r} collides with an input port")
        v = azure_value(value)
        if isinstance(v, str) and "'" in v:
            raise UserError(f"{spec.name}: {key} = {v!r}: AzureML's command line cannot carry a single quote")
        inputs[param_name(key)] = Input(
            type=_KIND_TYPES[value_kind(value)], default=v, description=f"{describe(key)} (--{key})".lstrip()
        )
    outputs = {
        p.name: Output(type=ARTIFACT_TYPES[p.type]["azureml"], mode=OUTPUT_MODE, description=p.description or None)
        for p in spec.outputs
    }
    return CommandComponent(
        name=name or spec.name,
        version=cfg.images.tag,
        display_name=name or spec.name,
        description=spec.summary,
        inputs=inputs,
        outputs=outputs,
        command=command_line(spec, cfg),
        environment=Environment(image=image_for(spec, cfg)),
    )


def build_pipeline(dag: Pipeline, cfg: Config):
    """The azure-ai-ml PipelineJob and ``{stage: CommandComponent}``."""
    from azure.ai.ml.dsl import pipeline

    s = settings(cfg, "azureml")
    check_names(dag, cfg)
    run_params = run_parameters(dag, cfg)
    components = {step.name: make_component(step.spec, step.config(cfg), step.name) for step in dag}
    sig = pipeline_signature(run_params, lambda v: _PY_TYPES[_KIND_TYPES[value_kind(v)]], azure_value)

    def body(**pipeline_inputs):
        nodes: dict[str, Any] = {}
        for step in dag:
            kwargs: dict[str, Any] = {}
            for port_name, (up, out) in step.wires.items():
                kwargs[port_name] = nodes[up].outputs[out]
            for key in bound_run_keys(step, cfg, run_params):
                kwargs[param_name(key)] = pipeline_inputs[param_name(key)]
            asset = registers_model(step.spec, cfg)
            if asset:
                kwargs[model_port(step.spec) + URI_SUFFIX] = kwargs[model_port(step.spec)]
            node = components[step.name](**kwargs)
            node.name = step.name  # not the Python variable's name
            node.display_name = step.name
            node.compute = s.compute_gpu if step.spec.uses_gpu(cfg) else s.compute_cpu
            if step.spec.nodes(cfg) > 1:
                _distribute(node, step.spec, cfg)
            for port in step.spec.outputs:
                node.outputs[port.name].mode = OUTPUT_MODE
            env = dict(STAGE_ENV)
            if s.hf_token_secret and needs_hf_token(step.spec, cfg):
                env[HF_SECRET_REF_ENV] = s.hf_token_secret  # a reference to a Key Vault secret, never its value
                if s.key_vault_url:
                    env[HF_VAULT_URL_ENV] = s.key_vault_url
            if asset:
                node.inputs[model_port(step.spec) + URI_SUFFIX].mode = "direct"
                env[registries.AZUREML_MODEL_ENV] = asset
            node.environment_variables = env
            nodes[step.name] = node

    body.__name__ = body.__qualname__ = param_name(cfg.name).replace("-", "_")
    body.__signature__ = inspect.Signature(sig)
    job = pipeline(
        name=param_name(cfg.name).replace("-", "_"),
        display_name=cfg.name,
        description=f"{dag.name}: " + " -> ".join(step.name for step in dag) + f" (config {cfg.name})",
        experiment_name=s.experiment_name or cfg.name,
    )(body)()
    job.settings.continue_on_step_failure = False
    return job, components


def _distribute(node, spec: StageSpec, cfg: Config) -> None:
    """``train.nodes`` instances, ``train.gpus`` processes on each: AzureML's PyTorch distribution starts
    every rank as a stage process with MASTER_ADDR, NODE_RANK, RANK, WORLD_SIZE set (core/ranks.py); node
    0's rank 0 writes the outputs, the other processes leave them alone."""
    from azure.ai.ml import PyTorchDistribution
    from azure.ai.ml.entities import JobResourceConfiguration

    per_node = int(spec.params(cfg).get(spec.gpu_count, 1)) if spec.gpu_count else 1
    node.distribution = PyTorchDistribution(process_count_per_instance=per_node)
    node.resources = JobResourceConfiguration(instance_count=spec.nodes(cfg))


def compile_pipeline(dag: Pipeline, cfg: Config, out: str | Path) -> Path:
    """Write DIR/pipeline.yml and DIR/stages/<stage>.yml (and DIR/schedule.yml)."""
    out = Path(out)
    if out.suffix in (".yml", ".yaml"):
        raise UserError(
            f"--out {out}: the azureml target writes a folder (pipeline.yml + components/); give a directory"
        )
    job, components = build_pipeline(dag, cfg)
    from core.outputs import make_parents

    make_parents(out / "components", str(out))
    for stale in (out / "components").glob("*.yml"):  # stages an earlier compile had
        if stale.stem not in components:
            stale.unlink()
    for name, comp in components.items():
        tree = {"$schema": SCHEMAS["component"], **_dump(comp)}
        (out / "components" / f"{name}.yml").write_text(yaml.safe_dump(tree, sort_keys=False))
    tree = _dump(job)
    tree["jobs"] = {step.name: tree["jobs"][step.name] for step in dag}  # in DAG order
    for name, node in tree["jobs"].items():
        node["component"] = f"./components/{name}.yml"  # the component files, not a second copy
    (out / "pipeline.yml").write_text(yaml.safe_dump({"$schema": SCHEMAS["pipeline"], **tree}, sort_keys=False))
    s = settings(cfg, "azureml")
    if s.schedule:
        write_schedule(cfg, out, s)
    elif (out / "schedule.yml").exists():  # left by an earlier compile with a schedule
        (out / "schedule.yml").unlink()
    return out / "pipeline.yml"


def write_schedule(cfg: Config, out: Path, s) -> Path:
    """A JobSchedule (``az ml schedule create --file schedule.yml``) that submits pipeline.yml."""
    from azure.ai.ml.entities import CronTrigger, JobSchedule

    schedule = JobSchedule(
        name=f"{param_name(cfg.name).replace('-', '_')}_retrain",
        trigger=CronTrigger(expression=s.schedule, time_zone=s.schedule_timezone),
        create_job="./pipeline.yml",
        display_name=f"{cfg.name} retrain",
    )
    tree = _dump(schedule)
    tree["create_job"] = "./pipeline.yml"
    path = out / "schedule.yml"
    path.write_text(yaml.safe_dump({"$schema": SCHEMAS["schedule"], **tree}, sort_keys=False))
    return path


def _dump(entity) -> dict:
    import io

    buf = io.StringIO()
    entity.dump(buf)
    return yaml.safe_load(buf.getvalue())


# ---------------------------------------------------------------------------------------
# On a workspace: submit, status, schedule through the real client (azure-ai-ml MLClient).

HOST_HINT = (
    "set --subscription/--resource-group/--workspace, or AZURE_SUBSCRIPTION_ID/AZURE_RESOURCE_GROUP/"
    "AZUREML_WORKSPACE_NAME, or put the workspace's config.json in this folder"
)
_STATES = {
    "NotStarted": "pending",
    "Queued": "pending",
    "Preparing": "pending",
    "Provisioning": "pending",
    "Starting": "pending",
    "Running": "running",
    "Finalizing": "running",
    "CancelRequested": "running",
    "NotResponding": "running",
    "Paused": "pending",
    "Completed": "succeeded",
    "Failed": "failed",
    "Canceled": "canceled",
    "Skipped": "skipped",
}


def _ml_client(conn):
    """``MLClient`` with ``DefaultAzureCredential`` (env service principal, workload or managed
    identity, the az CLI login): the workspace from the command line, the environment or a
    config.json; no credential is ever read from the config or the command line."""
    import logging
    import os

    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    if not os.environ.get("SLM_DEBUG"):  # the identity library lists every credential it tried, at WARNING
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
    credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    sub = conn.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
    rg = conn.resource_group or os.environ.get("AZURE_RESOURCE_GROUP") or os.environ.get("AZUREML_RESOURCE_GROUP")
    ws = conn.workspace or os.environ.get("AZUREML_WORKSPACE_NAME")
    if sub and rg and ws:
        return MLClient(credential, subscription_id=sub, resource_group_name=rg, workspace_name=ws)
    try:
        return MLClient.from_config(credential)
    except Exception:  # noqa: BLE001 - the SDK's own message is a page long
        missing = [n for n, v in (("subscription", sub), ("resource group", rg), ("workspace", ws)) if not v]
        raise UserError(f"no AzureML workspace (missing {', '.join(missing)}): {HOST_HINT}") from None


def _call(ml, what: str, fn):
    """One workspace call; the SDK's exceptions as one-line UserErrors, secrets masked."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    from .base import one_line

    where = f"AzureML workspace {ml.workspace_name!r}"
    no_credential = (
        f"{where}: no Azure credential: sign in with `az login`, or set a service principal "
        "(AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET), workload or managed identity in the environment"
    )
    try:
        return fn()
    except UserError:
        raise
    except ServiceRequestError as err:
        raise UserError(one_line(Exception(f"cannot reach {where}: {err}; {HOST_HINT}"))) from None
    except ClientAuthenticationError:
        raise UserError(no_credential) from None
    except HttpResponseError as err:
        raise UserError(
            one_line(Exception(f"{where} refused to {what}: HTTP {err.status_code}: {err.message}"))
        ) from None
    except Exception as err:  # noqa: BLE001
        text = _sdk_message(err)
        if "DefaultAzureCredential failed" in text or "CredentialUnavailable" in text:
            raise UserError(no_credential) from None
        if "Failed to establish a new connection" in text or "Max retries exceeded" in text:
            raise UserError(one_line(Exception(f"cannot reach {where}: {text}; {HOST_HINT}"))) from None
        raise UserError(one_line(Exception(f"{where}: cannot {what}: {type(err).__name__}: {text}"))) from None


def _sdk_message(err: Exception) -> str:
    """The message of an azure-ai-ml exception, whose text may be a JSON report of errors."""
    import json

    text = str(getattr(err, "message", None) or err).strip()
    if text.startswith("{"):
        try:
            errors = json.loads(text).get("errors") or []
            text = "; ".join(dict.fromkeys(str(e.get("message", e)) for e in errors)) or text  # distinct, in order
        except (ValueError, AttributeError):
            pass
    return text


def _job_status(dag: Pipeline, ml, job) -> "RunStatus":
    from .base import RunStatus, run_stages

    reported: dict[str, str] = {}
    for child in _call(ml, f"list the steps of job {job.name}", lambda: list(ml.jobs.list(parent_job_name=job.name))):
        name = child.display_name or child.name
        if child.status:
            reported[name] = _STATES.get(child.status, child.status.lower())
    stages = run_stages(dag, reported)
    return RunStatus(
        run_id=job.name,
        state=_STATES.get(job.status or "NotStarted", (job.status or "").lower()),
        stages=stages,
        url=job.studio_url,
    )


class AzureMLSettings(EngineSettings):
    cron_dialect = "azureml"
    hf_token_secret: names.KeyVaultSecret | None = "hf-token"  # a secret in the workspace's Key Vault
    # The workspace's Key Vault (``https://<vault>.vault.azure.net``): a job has no documented
    # env var for it, so it is compiled in; the stage reads the secret with the job's identity.
    key_vault_url: str | None = None
    compute_cpu: names.AzureMLCompute = "cpu-cluster"
    compute_gpu: names.AzureMLCompute = "gpu-cluster"
    experiment_name: names.AzureMLName | None = None  # default: the config's name
    environment_prefix: names.AzureMLName = "slm"
    # A promoted model becomes the next version of a model asset named model_name (default: the
    # config's name); register_model false: the metrics and report only.
    register_model: bool = True
    model_name: str | None = None

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v):
        if v and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", v):
            raise ValueError(
                "an AzureML model name: letters, digits, '-', '_' and '.', starting with a letter or digit"
            )
        return v

    @field_validator("key_vault_url")
    @classmethod
    def _vault_url(cls, v):
        if v is not None and not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]+)?/?", v):
            raise ValueError("expected the vault's https URL, such as https://my-vault.vault.azure.net")
        return v


class AzureMLTarget(Target):
    name = "azureml"
    title = "Azure Machine Learning"
    short = "AzureML"
    default_out = "azureml"
    writes_folder = True

    def written(self, dag):
        return ["pipeline.yml", "schedule.yml", *(f"components/{step.name}.yml" for step in dag)]

    host_hint = HOST_HINT

    settings = AzureMLSettings

    compile = staticmethod(compile_pipeline)
    validate = staticmethod(check_azureml)

    def recognizes(self, first_doc, path):
        return Path(path).is_dir() or "jobs" in first_doc or first_doc.get("type") in ("pipeline", "command")

    def submit(self, dag, cfg, conn):
        ml = _ml_client(conn)
        job, _ = build_pipeline(dag, cfg)
        s = settings(cfg, "azureml")
        created = _call(
            ml,
            "create the pipeline job",
            lambda: ml.jobs.create_or_update(job, experiment_name=s.experiment_name or cfg.name),
        )
        from .base import PENDING, RunStatus

        return RunStatus(
            run_id=created.name,
            state=_STATES.get(created.status or "NotStarted", "pending"),
            stages={step.name: PENDING for step in dag},
            url=created.studio_url,
        )

    def status(self, dag, conn, run_id):
        ml = _ml_client(conn)
        job = _call(ml, f"get job {run_id}", lambda: ml.jobs.get(run_id))
        return _job_status(dag, ml, job)

    def schedule(self, dag, cfg, conn, cron, timezone):
        """A JobSchedule with a CronTrigger. AzureML has no concurrency or catch-up setting on a
        schedule: it starts a job at each trigger time (even if the last one still runs) and
        does not backfill times missed while the schedule was disabled."""
        from azure.ai.ml.entities import CronTrigger, JobSchedule

        ml = _ml_client(conn)
        job, _ = build_pipeline(dag, cfg)
        schedule = JobSchedule(
            name=f"{param_name(cfg.name).replace('-', '_')}_retrain",
            trigger=CronTrigger(expression=cron, time_zone=timezone),
            create_job=job,
            display_name=f"{cfg.name} retrain",
        )
        created = _call(ml, "create the schedule", lambda: ml.schedules.begin_create_or_update(schedule).result())
        return (
            f"schedule {created.name}: cron {cron!r} ({timezone}); AzureML offers no concurrency limit or "
            "catch-up setting on schedules (a missed time is not backfilled)"
        )


TARGET = AzureMLTarget()
