"""Kubeflow Pipelines v2: the DAG as a KFP pipeline, compiled with the real SDK (kfp 2.17).

Every stage becomes a container component built from the registry: typed artifact inputs
and outputs (``Input[Dataset]``, ``Output[Model]``, ``Output[Metrics]``), one typed parameter
per stage parameter, and the stage's own command line (``StageSpec.argv``) with KFP
placeholders for the paths and values, plus ``--kfp-executor-input {{$}}`` so that the
stage writes KFP's executor output (runtime/kfp_output.py): artifact metadata,
the metrics scalars and, for a stage with a Metrics output, an extra
``Output[ClassificationMetrics]`` with the confusion matrix.

Per task: the stage's image, CPU/memory requests, ``nvidia.com/gpu`` where the stage uses a
GPU, a retry policy, caching options and the Hugging Face token from a Kubernetes Secret.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core import names
from core.config import Config
from core.errors import UserError
from core.spec import ARTIFACT_TYPES, Pipeline, StageSpec
from runtime import registries
from runtime.kfp_output import CONFUSION_SUFFIX, REPORT_SUFFIX

from . import trainjob
from .compile_common import (
    CACHE_CLAIM,
    GPU_RESOURCE,
    EngineSettings,
    kfp_cron,
    out_path,
    param_name,
    pipeline_signature,
    run_parameters,
    settings,
    value_kind,
)
from .plan import PipelinePlan, TaskPlan, plan_pipeline
from .validate import check_kfp

# The stage writes KFP's executor output itself (runtime/kfp_output.py) when given
# the executor input: without it, KFP sees no outputs and the next task finds no inputs.
EXECUTOR_INPUT_FLAG = "--kfp-executor-input"

# The display name of the dsl.If group that holds the steps behind the DAG's condition.
CONDITION_NAME = "when-changed"

_KIND_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict, "null": str}


def kfp_value(value: Any) -> Any:
    """A parameter value as KFP carries it. KFP puts a string into the command line verbatim,
    so strings (and null) are carried in their argv encoding; numbers, booleans, and lists and
    dicts of strings keep their type (the launcher renders them as JSON). A list or dict holding
    numbers goes as its JSON text: KFP's struct values make every number a float (300 -> 300.0),
    which the stage's typed parameters refuse for an integer field."""
    from core.config import encode

    if value is None or isinstance(value, str) or _struct_with_numbers(value):
        return encode(value)
    return value


def kfp_type(value: Any) -> type:
    """The KFP parameter type ``kfp_value(value)`` is carried as."""
    return str if _struct_with_numbers(value) else _KIND_TYPES[value_kind(value)]


def _struct_with_numbers(value: Any) -> bool:
    return isinstance(value, (list, dict)) and _holds_numbers(value)


def _holds_numbers(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_numbers(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_numbers(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _artifact_class(port_type: str):
    from kfp import dsl

    return getattr(dsl, ARTIFACT_TYPES[port_type]["kfp"])


def metrics_ports(spec: StageSpec) -> list[str]:
    return [p.name for p in spec.outputs if ARTIFACT_TYPES[p.type]["kfp"] == "Metrics"]


def make_component(plan: TaskPlan, s):
    """The step as a KFP container component (a ``@dsl.container_component`` built from data),
    named after the step (a task's steps share a stage; KFP names the task after it)."""
    from kfp import dsl

    spec, params = plan.spec, plan.values()
    launcher = _trainjob(plan, s) if plan.multi_node else None
    P = inspect.Parameter
    sig: list[inspect.Parameter] = []
    for port in spec.inputs:
        sig.append(P(port.name, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Input[_artifact_class(port.type)]))
    for port in spec.outputs:
        sig.append(P(port.name, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[_artifact_class(port.type)]))
    confusion = {name: name + CONFUSION_SUFFIX for name in metrics_ports(spec)}
    for extra in confusion.values():
        sig.append(P(extra, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[dsl.ClassificationMetrics]))
    for name in metrics_ports(spec):  # evaluate's report.html, which the KFP UI shows
        sig.append(P(name + REPORT_SUFFIX, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[dsl.HTML]))
    for out_param in spec.out_params:  # the stage reports them as parameterValues in the executor output
        sig.append(P(out_param.name, P.POSITIONAL_OR_KEYWORD, annotation=dsl.OutputPath(str)))
    for key, value in params.items():
        sig.append(
            P(
                param_name(key),
                P.POSITIONAL_OR_KEYWORD,
                annotation=kfp_type(value),
                default=kfp_value(value),
            )
        )
    names = [p.name for p in sig]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"{spec.name}: KFP input/output names collide: {dup}")

    def container(*args):
        ns = dict(zip(names, args))
        argv = plan.render_argv(lambda p: ns[p.name], lambda port: ns[port].path, lambda port: ns[port].path)
        if launcher:  # the stage on train.nodes machines: a TrainJob, created and awaited (runtime/trainjob.py)
            argv = [*LAUNCHER, "--manifest", launcher, *_port_names(spec), *argv[3:]]
        argv += [EXECUTOR_INPUT_FLAG, dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]
        return dsl.ContainerSpec(image=plan.image, command=argv[:3], args=argv[3:])

    container.__name__ = container.__qualname__ = plan.name
    container.__doc__ = _docstring(spec.summary, params)  # KFP takes the inputs' descriptions from "Args:"
    container.__signature__ = inspect.Signature(sig)
    return dsl.container_component(container)


LAUNCHER = ["python", "-m", "runtime.trainjob", "run"]


def _trainjob(plan: TaskPlan, s) -> str:
    """The TrainJob the launcher creates, as JSON: the stage's command line with the config's values;
    the launcher puts in the run's values of the run parameters and its name (engines/trainjob.py)."""
    argv = trainjob.job_argv(plan)
    doc = trainjob.manifest(plan, s, argv, f"{trainjob.JOB_ROOT}/{trainjob.JOB_TOKEN}")
    return json.dumps(doc, separators=(",", ":"))


def _port_names(spec: StageSpec) -> list[str]:
    return ["--inputs", ",".join(p.name for p in spec.inputs), "--outputs", ",".join(p.name for p in spec.outputs)]


def _docstring(summary: str, params: dict) -> str:
    """A Google-style docstring whose ``Args:`` are the config keys' ``Field(description=...)``:
    KFP's compiler turns them into the parameters' descriptions in the compiled IR."""
    from core.config import describe

    lines = [summary, "", "Args:"]
    lines += [f"    {param_name(key)}: {describe(key) or key} (--{key})" for key in params]
    return "\n".join(lines) + "\n"


def build_pipeline(dag: Pipeline, cfg: Config):
    """The KFP pipeline (a GraphComponent) for ``dag`` under ``cfg``."""
    from kfp import dsl, kubernetes

    plans = plan_pipeline(dag, cfg, "kfp")
    s, run_params = plans.settings, plans.run_params
    components = {plan.name: make_component(plan, s) for plan in plans}

    sig = pipeline_signature(run_params, kfp_type, kfp_value)
    pipeline_param_names = [p.name for p in sig]

    gated = dag.gated()

    def add(step, tasks: dict, channels: dict, artifacts_in: dict | None = None):
        plan = plans[step.name]
        kwargs: dict[str, Any] = {}
        for port_name, (up, out) in plan.wires.items():
            kwargs[port_name] = tasks[up].outputs[out] if up in tasks else artifacts_in[f"{up}_{out}"]
        for key in plan.bound_keys:
            kwargs[param_name(key)] = channels[param_name(key)]
        task = components[plan.name](**kwargs)
        _configure_task(task, plan, s, kubernetes)
        tasks[plan.name] = task

    gate = _gate_pipeline(dag, plans, add) if gated else None

    def body(*args):
        channels = dict(zip(pipeline_param_names, args))
        tasks: dict[str, Any] = {}
        for step in dag:
            if step.name not in gated:
                add(step, tasks, channels)
        if gate is not None:  # the data-change trigger: the rest of the DAG only when the condition holds
            c = dag.condition
            kwargs = {c.param: tasks[c.step].outputs[c.param]}
            kwargs.update({name: tasks[up].outputs[out] for name, (up, out) in _gate_artifacts(dag).items()})
            kwargs.update({name: channels[name] for name in _gate_parameters(dag, plans)})
            gate(**kwargs).set_display_name(CONDITION_NAME)

    body.__name__ = body.__qualname__ = param_name(cfg.name).replace("-", "_")
    body.__signature__ = inspect.Signature(sig)
    body.__doc__ = _docstring(f"{dag.name} (config {cfg.name})", run_params)
    return dsl.pipeline(
        name=cfg.name,
        description=f"{dag.name}: " + " -> ".join(step.name for step in dag) + f" (config {cfg.name})",
    )(body)


def _gate_artifacts(dag: Pipeline) -> dict[str, tuple[str, str]]:
    """``{"<step>_<output>": (step, output)}``: the artifacts the gated steps take from outside."""
    gated = dag.gated()
    out: dict[str, tuple[str, str]] = {}
    for step in dag:
        if step.name in gated:
            for up, port in step.wires.values():
                if up not in gated:
                    out[f"{up}_{port}"] = (up, port)
    return out


def _gate_parameters(dag: Pipeline, plans: PipelinePlan) -> list[str]:
    gated = dag.gated()
    keys = {k for plan in plans if plan.name in gated for k in plan.bound_keys}
    return [param_name(k) for k in plans.run_params if k in keys]


def _gate_pipeline(dag: Pipeline, plans: PipelinePlan, add):
    """The steps behind the DAG's condition, as a nested pipeline whose body is one ``dsl.If``
    on its own input parameter (the condition step's output, passed in by the caller).

    Why nested: KFP's local orchestrator (kfp 2.17) resolves a ``dsl.If`` operand only when it
    is a pipeline input (or a task output named ``Output``); with the condition step's output
    wired in as an input of the nested pipeline, the same file runs under ``kfp.local`` and on
    a cluster."""
    from kfp import dsl

    c = dag.condition
    gated = dag.gated()
    steps = {s.name: s for s in dag}
    P = inspect.Parameter
    sig = [P(c.param, P.POSITIONAL_OR_KEYWORD, annotation=str)]
    for name, (up, port) in _gate_artifacts(dag).items():
        ptype = {p.name: p.type for p in steps[up].spec.outputs}[port]
        sig.append(P(name, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Input[_artifact_class(ptype)]))
    kinds = {param_name(k): v for k, v in plans.run_params.items()}
    for name in _gate_parameters(dag, plans):
        sig.append(P(name, P.POSITIONAL_OR_KEYWORD, annotation=kfp_type(kinds[name])))
    names = [p.name for p in sig]

    def gate(*args):
        ns = dict(zip(names, args))
        tasks: dict[str, Any] = {}
        with dsl.If(ns[c.param] == c.equals, name=CONDITION_NAME):
            for step in dag:
                if step.name in gated:
                    add(step, tasks, ns, ns)

    gate.__name__ = gate.__qualname__ = CONDITION_NAME.replace("-", "_")
    gate.__signature__ = inspect.Signature(sig)
    return dsl.pipeline(name=CONDITION_NAME, description=f"{c.reason}: the steps after {c.step} are skipped")(gate)


def _configure_task(task, plan: TaskPlan, s, kubernetes) -> None:
    # A multi-node stage's task only launches its TrainJob: the nodes have the stage's resources.
    res = plan.launcher_resources if plan.multi_node else plan.resources
    task.set_display_name(plan.name)
    task.set_cpu_request(str(res.cpu))
    task.set_cpu_limit(str(res.cpu))
    task.set_memory_request(f"{res.memory_gb}Gi")
    task.set_memory_limit(f"{res.memory_gb}Gi")
    if res.gpu:
        task.set_accelerator_type(GPU_RESOURCE)
        task.set_accelerator_limit(res.gpu)
        if s.gpu_toleration:
            kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    r = plan.retry  # KFP retries every failure; it has no exit-code condition
    task.set_retry(
        num_retries=r.limit,
        backoff_duration=f"{r.backoff_seconds}s",
        backoff_factor=float(r.factor),
        backoff_max_duration=f"{r.cap_seconds}s",
    )
    task.set_caching_options(enable_caching=s.enable_caching)
    for claim, path in plan.mounts.items():
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=path)
    for name, value in plan.env.items():
        task.set_env_variable(name, value)
    if plan.secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=plan.secret.secret,
            secret_key_to_env={plan.secret.key: plan.secret.env},
            optional=plan.secret.optional,
        )


def compile_pipeline(dag: Pipeline, cfg: Config, out: str | Path) -> Path:
    """Write the KFP pipeline YAML (IR + Kubernetes platform spec) to ``out``."""
    from kfp import compiler

    path = out_path(out, "pipeline.yaml")
    compiler.Compiler().compile(pipeline_func=build_pipeline(dag, cfg), package_path=str(path))
    s = settings(cfg, "kfp")
    sidecar = path.with_name(path.stem + ".recurring-run.json")
    if s.schedule:
        write_recurring_run(cfg, path, s)
    elif sidecar.exists():  # left by an earlier compile with a schedule
        sidecar.unlink()
    return path


def write_recurring_run(cfg: Config, pipeline_path: Path, s) -> Path:
    """A recurring-run request for the KFP v2beta1 API (``POST /apis/v2beta1/recurringruns``),
    with the schedule converted to KFP's 6-field cron. The ``kfp`` CLI equivalent is in
    docs/compile.md."""
    body = {
        "display_name": f"{cfg.name}-retrain",
        "description": f"Retrain {cfg.name} on schedule {s.schedule!r} ({s.schedule_timezone}).",
        "pipeline_spec_path": pipeline_path.name,
        "trigger": {"cron_schedule": {"cron": kfp_cron(s.schedule)}},
        "mode": "ENABLE",
        "max_concurrency": "1",
        "no_catchup": True,
    }
    target = pipeline_path.with_name(pipeline_path.stem + ".recurring-run.json")
    target.write_text(json.dumps(body, indent=2) + "\n")
    return target


# ---------------------------------------------------------------------------------------
# On a cluster: submit, status, schedule through the real client (kfp.Client, API v2beta1).

from .base import RunStatus, Target  # noqa: E402

_STATES = {
    "PENDING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "SKIPPED": "skipped",
    "FAILED": "failed",
    "CANCELING": "running",
    "CANCELED": "canceled",
    "PAUSED": "pending",
    "CACHED": "succeeded",
}
HOST_HINT = "set --host or KF_PIPELINES_ENDPOINT (or a kube context where KFP is installed)"


def _host(conn) -> str | None:
    import os

    return conn.host or os.environ.get("KF_PIPELINES_ENDPOINT") or None


def _client(conn):
    """``kfp.Client``: the host from --host or KF_PIPELINES_ENDPOINT (a bearer token from
    KF_PIPELINES_TOKEN if set), else KFP's API through the kube context's API server proxy with
    the context's credentials, else (in a pod) the in-cluster service. Never from the config or
    the command line."""
    import os
    import warnings

    host = _host(conn)
    token = os.environ.get("KF_PIPELINES_TOKEN") or None
    ca = None
    if not host:
        kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
        if kubeconfig.exists():
            host, token, ca = _kube_context(kubeconfig)
        elif not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise UserError(f"no KFP host: {HOST_HINT}")
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _calling("connect to", host):
            return kfp.Client(host=host, namespace=conn.namespace or "kubeflow", existing_token=token, ssl_ca_cert=ca)


KFP_SERVICE_PROXY = "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy"


def _kube_context(kubeconfig: Path) -> tuple[str, str | None, str | None]:
    """(KFP's URL through the API server's service proxy, the context's bearer token, its CA file).
    kfp.Client's own kube-context path (kfp 2.17 with kubernetes 3x) loses the proxy path, so the
    context is read here with the kubernetes client and handed to kfp.Client as a host."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    from .base import one_line

    kc = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=kc)
    except Exception as err:  # noqa: BLE001 - a broken kubeconfig, one line
        raise UserError(f"no KFP host: {HOST_HINT} (the kube context: {one_line(err)})") from None
    auth = (kc.api_key or {}).get("authorization") or ""
    return kc.host.rstrip("/") + KFP_SERVICE_PROXY, auth.removeprefix("Bearer ").strip() or None, kc.ssl_ca_cert


class _calling:
    """Turns the client's exceptions into one-line UserErrors naming the host, secrets masked."""

    def __init__(self, what: str, host: str | None):
        self.what, self.host = what, host or "the kube context's KFP"

    def __enter__(self):
        return self

    def __exit__(self, typ, err, _tb):
        if err is None or isinstance(err, (UserError, KeyboardInterrupt)):
            return False
        from kfp_server_api.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from .base import one_line

        if isinstance(err, ApiException):
            body = " ".join(str(err.body or "").split())[:300]
            raise UserError(
                one_line(
                    Exception(f"KFP at {self.host} refused to {self.what}: HTTP {err.status} {err.reason}: {body}")
                )
            ) from None
        if isinstance(err, (HTTPError, OSError)):
            reason = getattr(err, "reason", None) or err
            raise UserError(one_line(Exception(f"cannot reach KFP at {self.host}: {reason}; {HOST_HINT}"))) from None
        raise UserError(
            one_line(Exception(f"KFP at {self.host}: cannot {self.what}: {type(err).__name__}: {err}"))
        ) from None


def _upload(client, dag: Pipeline, cfg: Config, conn) -> tuple[str, str]:
    """Compile to a temporary file and upload it: a new pipeline, or a new version of the
    pipeline of that name. Returns (pipeline_id, version_id)."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="slm-kfp-")) / "pipeline.yaml"
    compile_pipeline(dag, cfg, tmp)
    try:
        return _upload_file(client, cfg, conn, tmp)
    finally:
        import shutil

        shutil.rmtree(tmp.parent, ignore_errors=True)


def _upload_file(client, cfg: Config, conn, tmp: Path) -> tuple[str, str]:
    import hashlib
    import time

    host = _host(conn)
    with _calling("look up the pipeline", host):
        pipeline_id = client.get_pipeline_id(cfg.name)
    if pipeline_id is None:
        with _calling("upload the pipeline", host):
            pipeline = client.upload_pipeline(
                str(tmp), pipeline_name=cfg.name, description=f"slm-finetune config {cfg.name}"
            )
        with _calling("find the uploaded pipeline's version", host):  # a run names both ids
            versions = client.list_pipeline_versions(
                pipeline.pipeline_id, page_size=1, sort_by="created_at desc"
            ).pipeline_versions
        if not versions:
            raise UserError(f"KFP at {host}: the uploaded pipeline {pipeline.pipeline_id} has no version")
        return pipeline.pipeline_id, versions[0].pipeline_version_id
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    with _calling("upload a pipeline version", host):
        version = client.upload_pipeline_version(
            str(tmp), f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{digest}", pipeline_id=pipeline_id
        )
    return pipeline_id, version.pipeline_version_id


def _experiment(client, cfg: Config, conn) -> str:
    with _calling("create the experiment", _host(conn)):
        return client.create_experiment(cfg.name).experiment_id


def _uploaded(dag: Pipeline, cfg: Config, conn) -> tuple:
    """(client, pipeline id, version id, experiment id): what a run and a recurring run start from."""
    client = _client(conn)
    pipeline_id, version_id = _upload(client, dag, cfg, conn)
    return client, pipeline_id, version_id, _experiment(client, cfg, conn)


def run_arguments(dag: Pipeline, cfg: Config) -> dict[str, Any]:
    """The run parameters as the run's arguments: ``{"train_lora_r": 16, ...}``."""
    return {param_name(k): kfp_value(v) for k, v in run_parameters(dag, cfg).items()}


def _is_step_task(task) -> bool:
    """A container task of the run (it has a pod), not the root DAG, a driver or the condition."""
    return bool(getattr(task, "child_tasks", None) is None and getattr(task, "pod_name", None))


def _run_status(dag: Pipeline, client, run, conn) -> "RunStatus":
    from .base import RunStatus, run_stages, seconds_between

    steps = {step.name for step in dag}
    reported: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for task in (getattr(run.run_details, "task_details", None) or []) if run.run_details else []:
        # a step's task is named after it; the root, drivers and the condition's DAG are not steps
        if task.state and (task.display_name in steps or _is_step_task(task)):
            reported[task.display_name] = _STATES.get(task.state, task.state.lower())
            secs = seconds_between(task.start_time, task.end_time)
            if secs is not None:
                seconds[task.display_name] = secs
    stages = run_stages(dag, reported)
    error = getattr(run, "error", None)
    message = getattr(error, "message", None) if error else None
    return RunStatus(
        run_id=run.run_id,
        state=_STATES.get(run.state or "PENDING", "pending"),
        stages=stages,
        url=f"{client._get_url_prefix()}/#/runs/details/{run.run_id}",
        message=message,
        seconds=seconds,
    )


class ModelRegistrySettings(BaseModel):
    """A Kubeflow Model Registry the promoting task registers the INT4 model in. The client signs
    in with the pod's service-account token (the `model-registry` package reads it)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no bool-to-int or str-to-bool coercion

    url: str = Field(
        description="the registry's REST address, such as https://model-registry-service.kubeflow.svc:8443"
    )
    model_name: names.AzureMLName | None = Field(
        None, description="the registered model's name; default: the config's name"
    )
    author: str = "slm-pipeline"

    @field_validator("url")
    @classmethod
    def _url(cls, v):
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]+)?/?", v):
            raise ValueError("expected http(s)://host[:port], such as https://model-registry-service.kubeflow.svc:8443")
        return v.rstrip("/")


class KfpSettings(EngineSettings):
    cron_dialect = "kfp"
    enable_caching: bool = True
    cache_claim: names.DnsSubdomain | None = CACHE_CLAIM  # the model-cache PVC mounted at /cache; null: none
    gpu_toleration: bool = True  # tolerate the usual nvidia.com/gpu taint on GPU tasks
    model_registry: ModelRegistrySettings | None = None  # null: promotion is the metrics artifact's metadata only

    def registry_env(self, config_name: str) -> dict[str, str]:
        r = self.model_registry
        if r is None:
            return {}
        return {
            registries.REGISTRY_URL_ENV: r.url,
            registries.REGISTRY_MODEL_ENV: r.model_name or config_name,
            registries.REGISTRY_AUTHOR_ENV: r.author,
        }


class KfpTarget(Target):
    name = "kfp"
    title = "Kubeflow Pipelines"
    short = "KFP"
    default_out = "pipeline.yaml"
    sidecars = (".recurring-run.json",)
    host_hint = HOST_HINT

    settings = KfpSettings

    compile = staticmethod(compile_pipeline)
    validate = staticmethod(check_kfp)

    def recognizes(self, first_doc, path):
        return "pipelineInfo" in first_doc or "deploymentSpec" in first_doc

    def submit(self, dag, cfg, conn):
        client, pipeline_id, version_id, experiment_id = _uploaded(dag, cfg, conn)
        import time

        with _calling("create the run", _host(conn)):
            run = client.run_pipeline(
                experiment_id,
                f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                params=run_arguments(dag, cfg),
                pipeline_id=pipeline_id,
                version_id=version_id,
            )
        return _run_status(dag, client, run, conn)

    def status(self, dag, conn, run_id):
        client = _client(conn)
        with _calling(f"get run {run_id}", _host(conn)):
            run = client.get_run(run_id)
        return _run_status(dag, client, run, conn)

    def schedule(self, dag, cfg, conn, cron, timezone):
        """A recurring run: KFP's 6-field cron (seconds first), at most one run at a time
        (max_concurrency 1), and no backfill of missed intervals (no_catchup)."""
        client, pipeline_id, version_id, experiment_id = _uploaded(dag, cfg, conn)
        with _calling("create the recurring run", _host(conn)):
            rec = client.create_recurring_run(
                experiment_id,
                f"{cfg.name}-retrain",
                description=f"Retrain {cfg.name} on {cron!r} ({timezone})",
                cron_expression=kfp_cron(cron),
                max_concurrency=1,
                no_catchup=True,
                params=run_arguments(dag, cfg),
                pipeline_id=pipeline_id,
                version_id=version_id,
            )
        note = (
            ""
            if timezone in ("UTC", "Etc/UTC")
            else (
                f"; KFP has no time zone setting: the cron is read in the "
                f"API server's zone (UTC on standard installs), not {timezone}"
            )
        )
        return (
            f"recurring run {rec.recurring_run_id}: cron {kfp_cron(cron)!r} (KFP's 6 fields), "
            f"max_concurrency 1, no catch-up{note}"
        )


TARGET = KfpTarget()
