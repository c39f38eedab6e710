"""Argo Workflows: the DAG as a Workflow built with hera (7.1) and dumped as YAML.

One container template per stage (its image, the stage's own command line with Argo
placeholders, input/output artifacts, CPU/memory requests, ``nvidia.com/gpu`` where the
stage uses a GPU, a retry strategy, the model-cache volume and the Hugging Face token from a
Kubernetes Secret), and one DAG task per step whose input artifacts come ``from`` the
upstream task's outputs. The run parameters are workflow arguments
(``argo submit -p train_lora_r=32``).

What the cluster must provide, all created by ``manifests/`` under the default settings:
the namespace, a service account with the executor's RBAC, the model-cache PVC
(``targets.argo.cache_claim``) and an artifact repository that the Workflow names with
``artifactRepositoryRef`` (``targets.argo.artifact_repository_key``). Outputs are stored
unarchived (``archive: none``): models are multi-GB and barely compress, and tar+gzip would
cost minutes per stage.

Compiling needs no Argo server. With ``targets.argo.schedule`` the same spec is also written
as a CronWorkflow next to the Workflow (``<out>.cron.yaml``). ``pipeline.py submit|status|
schedule --target argo`` talk to an Argo Server through hera's ``WorkflowsService``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import names
from core.config import Config, encode
from core.errors import UserError
from core.spec import Pipeline, Step

from . import trainjob
from .base import RunStatus, Target
from .compile_common import (
    CACHE_CLAIM,
    CACHE_ENV,
    CACHE_MOUNT,
    DETERMINISTIC_EXIT_CODES,
    GPU_RESOURCE,
    STAGE_ENV,
    EngineSettings,
    check_names,
    image_for,
    k8s_name,
    needs_hf_token,
    out_path,
    param_name,
    run_parameters,
    settings,
    task_params,
)
from .validate import check_argo

ENTRYPOINT = "main"
IN_DIR = "/tmp/artifacts/inputs"
OUT_DIR = "/tmp/artifacts/outputs"
PARAMS_DIR = "/tmp/parameters/outputs"  # the stage writes one file per output parameter here
# The promoting stage (runtime/promotion.py) writes its record here once its gate
# passed; it becomes the task's output artifact `promoted`, beside the run's other outputs.
PROMOTION_PATH = "/tmp/promotion/promoted.json"
PROMOTION_ARTIFACT = "promoted"
CACHE_VOLUME = "model-cache"
# The longest wait between two tries (Argo's ``backoff.cap``; KFP's ``backoffMaxDuration``).
# Not ``maxDuration``: that is a deadline counted from the first attempt, so a stage that
# ran longer than it would never be retried.
BACKOFF_CAP = "1h"


def retry_expression() -> str:
    """Argo's retry condition: retry errors and failures, except the exit codes no retry can fix.

    ``lastRetry.status`` is ``Error`` (pod deleted, node lost, controller error) or ``Failed``
    (the main container exited non-zero); ``lastRetry.exitCode`` is a string, "-1" when
    unknown. With ``retryPolicy: Always`` both the policy and this expression must hold.
    """
    codes = ", ".join(str(c) for c in DETERMINISTIC_EXIT_CODES)
    return (
        f"lastRetry.status == 'Error' or (lastRetry.status == 'Failed' and asInt(lastRetry.exitCode) not in [{codes}])"
    )


class _Ref:
    def __init__(self, text: str):
        self.text = text


def template_argv(step: Step, cfg: Config) -> list[str]:
    spec = step.spec
    argv = spec.argv(
        {k: _Ref(f"{{{{inputs.parameters.{param_name(k)}}}}}") for k in task_params(spec, cfg)},
        {p.name: _Ref(f"{{{{inputs.artifacts.{p.name}.path}}}}") for p in spec.inputs},
        {p.name: _Ref(f"{{{{outputs.artifacts.{p.name}.path}}}}") for p in spec.outputs},
    )
    return [a.text if isinstance(a, _Ref) else a for a in argv]


def _spec_kwargs(dag: Pipeline, cfg: Config) -> dict[str, Any]:
    """Everything a Workflow and a CronWorkflow share, as hera constructor arguments."""
    from hera.workflows import DAG, Parameter, Task

    s = settings(cfg, "argo")
    check_names(dag, cfg)
    run_params = run_parameters(dag, cfg)

    templates: dict[str, Any] = {}
    extra_templates: list[Any] = []  # the multi-node stages' inner templates
    for step in dag:
        scfg = step.config(cfg)  # a task's step: its task's config
        env = _stage_env(step.spec, scfg, s)
        if trainjob.multi_node(step.spec, scfg):  # a nested DAG: stage the data in, the TrainJob, collect
            templates[step.name] = _trainjob_dag(step, scfg, s, env, extra_templates)
            continue
        templates[step.name] = _container(step, scfg, s, env)
    tasks = [(step, _task_arguments(step, step.config(cfg), run_params)) for step in dag]
    gated, when = dag.gated(), _when(dag)

    def build_dag():
        with DAG(name=ENTRYPOINT) as main:
            for step, arguments in tasks:
                Task(
                    name=k8s_name(step.name),
                    template=templates[step.name],
                    arguments=arguments,
                    dependencies=sorted(k8s_name(u) for u in step.upstream()) or None,
                    when=when if step.name in gated else None,
                )
        return main

    return dict(
        entrypoint=ENTRYPOINT,
        namespace=s.namespace,
        service_account_name=s.service_account,
        **_storage(s),
        arguments=[Parameter(name=param_name(k), value=encode(v)) for k, v in run_params.items()],
        labels={"app.kubernetes.io/name": k8s_name(dag.name), "slm-pipeline/config": k8s_name(cfg.name)},
        templates=list(templates.values()) + extra_templates,
        _dag=build_dag,
    )


def _storage(s) -> dict[str, Any]:
    """The artifact repository and the cache volume, as Workflow arguments."""
    from hera.workflows.models import (
        ArtifactRepositoryRef,
        PersistentVolumeClaimVolumeSource,
        PodSecurityContext,
        Volume,
    )

    from .docker import IMAGE_GID

    repository = s.artifact_repository_key and ArtifactRepositoryRef(
        config_map=s.artifact_repository_configmap, key=s.artifact_repository_key
    )
    claim = s.cache_claim and PersistentVolumeClaimVolumeSource(claim_name=s.cache_claim)
    return dict(
        artifact_repository_ref=repository or None,
        volumes=[Volume(name=CACHE_VOLUME, persistent_volume_claim=claim)] if claim else None,
        # The images run as 10001:10001; fsGroup makes the cache volume writable for them.
        security_context=PodSecurityContext(fs_group=IMAGE_GID) if s.cache_claim else None,
    )


def _stage_env(spec, cfg: Config, s) -> list[Any]:
    """A stage container's environment: the stage's own, the cache, the HF token secret, and where
    output parameters and the promotion record go."""
    from hera.workflows import Env, SecretEnv

    from core.artifacts import PARAMETERS_DIR_ENV
    from runtime import promotion

    env: list[Any] = [Env(name=k, value=v) for k, v in STAGE_ENV.items()]
    if s.cache_claim:
        env += [Env(name=k, value=v) for k, v in CACHE_ENV.items()]
    if s.hf_token_secret and needs_hf_token(spec, cfg):
        env.append(
            SecretEnv(name=s.hf_token_env, secret_name=s.hf_token_secret, secret_key=s.hf_token_key, optional=True)
        )
    if spec.out_params:
        env.append(Env(name=PARAMETERS_DIR_ENV, value=PARAMS_DIR))
    if promotion.promotes(spec):
        env.append(Env(name=promotion.PROMOTION_FILE_ENV, value=PROMOTION_PATH))
    return env


def _container(step, cfg: Config, s, env: list[Any]):
    """One stage as a container template: its ports as artifacts, its parameters, resources, retries."""
    from hera.workflows import Artifact, Container, Parameter, Resources, RetryStrategy
    from hera.workflows.models import ArchiveStrategy, Backoff, NoneStrategy, Toleration, ValueFrom, VolumeMount

    from runtime import promotion

    spec = step.spec
    res = spec.resources(cfg)
    argv = template_argv(step, cfg)
    return Container(
        name=k8s_name(step.name),
        image=image_for(spec, cfg),
        command=argv[:3],
        args=argv[3:],
        inputs=[Artifact(name=p.name, path=f"{IN_DIR}/{p.name}") for p in spec.inputs]
        + [Parameter(name=param_name(k)) for k in task_params(spec, cfg)],
        outputs=[
            Artifact(name=p.name, path=f"{OUT_DIR}/{p.name}", archive=ArchiveStrategy(none=NoneStrategy()))
            for p in spec.outputs
        ]
        + [Parameter(name=p.name, value_from=ValueFrom(path=f"{PARAMS_DIR}/{p.name}")) for p in spec.out_params]
        + (
            [Artifact(name=PROMOTION_ARTIFACT, path=PROMOTION_PATH, archive=ArchiveStrategy(none=NoneStrategy()))]
            if promotion.promotes(spec)
            else []
        ),
        resources=Resources(
            cpu_request=res.cpu,
            cpu_limit=res.cpu,
            memory_request=f"{res.memory_gb}Gi",
            memory_limit=f"{res.memory_gb}Gi",
            gpus=res.gpu or None,
            gpu_flag=GPU_RESOURCE,
        ),
        # limit and factor as strings: Argo's JSON schema types them so (its CRD takes either).
        retry_strategy=RetryStrategy(
            limit=str(s.retries),
            retry_policy="Always",
            expression=retry_expression(),
            backoff=Backoff(duration=f"{s.retry_backoff_seconds}s", factor="2", cap=BACKOFF_CAP),
        ),
        env=env,
        volume_mounts=[VolumeMount(name=CACHE_VOLUME, mount_path=CACHE_MOUNT)] if s.cache_claim else None,
        tolerations=[Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]
        if (res.gpu and s.gpu_toleration)
        else None,
    )


def _task_arguments(step, cfg: Config, run_params: dict) -> list[Any]:
    """A DAG task's arguments: its wires as artifacts from the upstream task, its parameters from the
    run's parameters where the run may change them, else as constants."""
    from hera.workflows import Artifact, Parameter

    arguments: list[Any] = []
    for port_name, (up, out) in step.wires.items():
        arguments.append(Artifact(name=port_name, from_=f"{{{{tasks.{k8s_name(up)}.outputs.artifacts.{out}}}}}"))
    for key, value in task_params(step.spec, cfg).items():
        if key in run_params and step.binds(key):
            arguments.append(Parameter(name=param_name(key), value=f"{{{{workflow.parameters.{param_name(key)}}}}}"))
        else:
            if "{{" in encode(value):
                raise UserError(f"{step.name}: {key} = {value!r}: Argo would read '{{{{' as a template tag")
            arguments.append(Parameter(name=param_name(key), value=encode(value)))
    return arguments


def _when(dag: Pipeline) -> str | None:
    """The data-change trigger: every step behind the DAG's condition gets the same `when`. Argo
    counts a skipped dependency as done, so each gated task must test it, not only the first."""
    if not dag.gated():
        return None
    c = dag.condition
    return f"{{{{tasks.{k8s_name(c.step)}.outputs.parameters.{c.param}}}}} == {c.equals}"


# A TrainJob's first condition once its JobSet ended (engines/trainjob.py). Argo reads these as label
# selectors over gjson paths, which cannot search a list by type: the controller sets no other
# condition before Complete or Failed on a TrainJob that was never suspended.
TRAINJOB_SUCCESS = f"status.conditions.0.type == {trainjob.COMPLETE}, status.conditions.0.status == True"
TRAINJOB_FAILURE = f"status.conditions.0.type == {trainjob.FAILED}, status.conditions.0.status == True"


def _trainjob_dag(step: Step, cfg: Config, s, env: list, extra_templates: list):
    """The stage on ``train.nodes`` machines: copy its inputs into the job folder on the cache volume,
    create the TrainJob (a ``resource`` template waiting on its status), copy node 0's sealed outputs
    out as the task's artifacts. The nested DAG has the stage's inputs and outputs, so the tasks
    around it are those of the one-node stage."""
    from hera.workflows import DAG, Artifact, Parameter, Task
    from hera.workflows.models import ArchiveStrategy, NoneStrategy

    spec, name = step.spec, k8s_name(step.name)
    job_dir = f"{trainjob.JOB_ROOT}/{{{{workflow.uid}}}}"
    params = {k: _Ref(f"{{{{inputs.parameters.{param_name(k)}}}}}") for k in task_params(spec, cfg)}
    argv = [a.text if isinstance(a, _Ref) else a for a in trainjob.job_argv(spec, params)]
    doc = trainjob.manifest(spec, cfg, s, argv, job_dir)
    declared = [Parameter(name=param_name(k)) for k in task_params(spec, cfg)]

    def copier(what: str, flags: list[str], **io):
        return _job_copier(what, flags, step, cfg, job_dir, env, **io)

    stage_in = copier(
        "stage-in",
        [x for p in spec.inputs for x in (f"--{p.name}", f"{{{{inputs.artifacts.{p.name}.path}}}}")],
        inputs=[Artifact(name=p.name, path=f"{IN_DIR}/{p.name}") for p in spec.inputs],
    )
    stage_out = copier(
        "stage-out",
        [x for p in spec.outputs for x in (f"--{p.name}", f"{{{{outputs.artifacts.{p.name}.path}}}}")],
        outputs=[
            Artifact(name=p.name, path=f"{OUT_DIR}/{p.name}", archive=ArchiveStrategy(none=NoneStrategy()))
            for p in spec.outputs
        ],
    )
    create = _trainjob_resource(name, doc, declared, s)
    extra_templates += [stage_in, create, stage_out]
    tasks = [
        Task(
            name="stage-in",
            template=stage_in,
            arguments=[Artifact(name=p.name, from_=f"{{{{inputs.artifacts.{p.name}}}}}") for p in spec.inputs],
        ),
        Task(
            name="trainjob",
            template=create,
            dependencies=["stage-in"],
            arguments=[Parameter(name=p.name, value=f"{{{{inputs.parameters.{p.name}}}}}") for p in declared],
        ),
        Task(name="stage-out", template=stage_out, dependencies=["trainjob"]),
    ]
    # Built whole, not under `with`: hera's context would need the Workflow, which is assembled later.
    nested = DAG(
        name=name,
        inputs=[Artifact(name=p.name) for p in spec.inputs] + declared,
        outputs=[
            Artifact(name=p.name, from_=f"{{{{tasks.stage-out.outputs.artifacts.{p.name}}}}}") for p in spec.outputs
        ],
        tasks=tasks,
    )
    return nested


def _job_copier(what: str, flags: list[str], step: Step, cfg: Config, job_dir: str, env: list, **io):
    """A small container of the stage's image that copies between the job folder and the artifacts
    (``python -m runtime.trainjob stage-in|stage-out``)."""
    from hera.workflows import Container, Resources
    from hera.workflows.models import VolumeMount

    small = step.spec.cpu
    return Container(
        name=f"{k8s_name(step.name)}-{what}",
        image=image_for(step.spec, cfg),
        command=["python", "-m", "runtime.trainjob", what],
        args=[*flags, "--job-dir", job_dir],
        env=env,
        volume_mounts=[VolumeMount(name=CACHE_VOLUME, mount_path=CACHE_MOUNT)],
        resources=Resources(cpu_request=small.cpu, memory_request=f"{small.memory_gb}Gi"),
        **io,
    )


def _trainjob_resource(name: str, doc: dict, declared: list, s):
    """The ``resource`` template that creates the TrainJob and waits on its status."""
    import yaml
    from hera.workflows import Resource, RetryStrategy
    from hera.workflows.models import Backoff

    return Resource(
        name=f"{name}-trainjob",
        action="create",
        set_owner_reference=True,  # deleted with the workflow
        manifest=yaml.safe_dump(doc, sort_keys=False),
        success_condition=TRAINJOB_SUCCESS,
        failure_condition=TRAINJOB_FAILURE,
        inputs=declared,
        # A failed TrainJob (a lost node) is created anew; it resumes from rank 0's checkpoint.
        retry_strategy=RetryStrategy(
            limit=str(s.retries),
            retry_policy="Always",
            backoff=Backoff(duration=f"{s.retry_backoff_seconds}s", factor="2", cap=BACKOFF_CAP),
        ),
    )


def _assemble(cls, dag: Pipeline, cfg: Config, **extra):
    kwargs = _spec_kwargs(dag, cfg)
    build_dag = kwargs.pop("_dag")
    with cls(**kwargs, **extra) as wf:  # hera's tasks must be declared under the workflow
        build_dag()
    return wf


def _object_name(cfg: Config, name: str, limit: int, what: str) -> str:
    """Argo's name limits: a Workflow's name is a label value (63; generateName adds 5
    characters), a CronWorkflow's leaves room for the "-<unix time>" of its runs (52)."""
    if len(name) > limit:
        raise UserError(
            f"config name {cfg.name!r}: {what} {name!r} has {len(name)} characters, Argo allows {limit}; set a "
            "shorter `name`"
        )
    return name


def build_workflow(dag: Pipeline, cfg: Config):
    from hera.workflows import Workflow

    return _assemble(
        Workflow,
        dag,
        cfg,
        generate_name=_object_name(cfg, f"{k8s_name(cfg.name)}-", 63 - 5, "the Workflow's generateName"),
    )


def build_cron_workflow(dag: Pipeline, cfg: Config, cron: str | None = None, timezone: str | None = None):
    """The retrain CronWorkflow: one run at a time (``concurrencyPolicy: Forbid``) and no
    catch-up (``startingDeadlineSeconds``: a run missed by more than that is skipped)."""
    from hera.workflows import CronWorkflow

    s = settings(cfg, "argo")
    return _assemble(
        CronWorkflow,
        dag,
        cfg,
        name=_object_name(cfg, f"{k8s_name(cfg.name)}-retrain", 52, "the CronWorkflow's name"),
        schedules=[cron or s.schedule],
        timezone=timezone or s.schedule_timezone,
        concurrency_policy="Forbid",
        starting_deadline_seconds=STARTING_DEADLINE_SECONDS,
    )


def compile_pipeline(dag: Pipeline, cfg: Config, out: str | Path) -> Path:
    path = out_path(out, "workflow.yaml")
    path.write_text(build_workflow(dag, cfg).to_yaml())
    s = settings(cfg, "argo")
    cron = path.with_name(path.stem + ".cron.yaml")
    if s.schedule:
        cron.write_text(build_cron_workflow(dag, cfg).to_yaml())
    elif cron.exists():  # left by an earlier compile with a schedule
        cron.unlink()
    return path


# ---------------------------------------------------------------------------------------
# On a cluster: submit, status, schedule through hera's WorkflowsService (the Argo Server API).

HOST_HINT = (
    "set --host or ARGO_SERVER (e.g. https://localhost:2746 after `kubectl -n argo port-forward svc/argo-server 2746`)"
)
_PHASES = {
    "Pending": "pending",
    "Running": "running",
    "Succeeded": "succeeded",
    "Failed": "failed",
    "Error": "failed",
    "Skipped": "skipped",
    "Omitted": "skipped",
}
# The CronWorkflow's runs: no catch-up beyond this (a run missed by more is skipped).
STARTING_DEADLINE_SECONDS = 600


def _service(conn):
    """hera's WorkflowsService: host from --host or ARGO_SERVER, token from ARGO_TOKEN (never
    from the config), TLS verified unless ARGO_INSECURE_SKIP_VERIFY=true."""
    import os

    from hera.workflows import WorkflowsService

    host = conn.host or os.environ.get("ARGO_SERVER")
    if not host:
        raise UserError(f"no Argo server: {HOST_HINT}")
    if not host.startswith(("http://", "https://")):
        host = ("http://" if os.environ.get("ARGO_SECURE", "true").lower() == "false" else "https://") + host
    verify = os.environ.get("ARGO_INSECURE_SKIP_VERIFY", "false").lower() != "true"
    return WorkflowsService(host=host.rstrip("/") + "/", token=os.environ.get("ARGO_TOKEN") or None, verify_ssl=verify)


def _namespace(cfg_or_none, conn) -> str:
    import os

    ns = (
        conn.namespace
        or (settings(cfg_or_none, "argo").namespace if cfg_or_none is not None else None)
        or os.environ.get("ARGO_NAMESPACE")
    )
    return ns or "slm-pipeline"


def _call(service, what: str, fn):
    """Run one API call; the client's exceptions as one-line UserErrors naming the server."""
    import requests

    from .base import one_line

    host = service.host.rstrip("/")
    try:
        return fn()
    except requests.exceptions.ConnectionError as err:
        reason = err.args[0] if err.args else err
        reason = getattr(reason, "reason", reason)
        raise UserError(one_line(Exception(f"cannot reach Argo at {host}: {reason}; {HOST_HINT}"))) from None
    except requests.exceptions.RequestException as err:
        raise UserError(one_line(Exception(f"cannot reach Argo at {host}: {err}; {HOST_HINT}"))) from None
    except UserError:
        raise
    except Exception as err:  # hera raises its own exceptions for HTTP errors
        raise UserError(one_line(Exception(f"Argo at {host} refused to {what}: {type(err).__name__}: {err}"))) from None


def _status(dag: Pipeline, wf, host: str) -> RunStatus:
    from .base import run_stages, seconds_between

    by_task = {k8s_name(step.name): step.name for step in dag}
    status = wf.status
    reported: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for node in ((status.nodes if status else None) or {}).values():
        stage = by_task.get(node.display_name or "", node.display_name)
        if stage and node.type in ("Pod", "Retry") and node.phase:
            if node.type == "Retry" or stage not in reported:
                reported[stage] = _PHASES.get(node.phase, node.phase.lower())
                secs = seconds_between(node.started_at, node.finished_at)
                if secs is not None:
                    seconds[stage] = secs
    stages = run_stages(dag, reported)
    phase = (status.phase if status else None) or "Pending"
    name, ns = wf.metadata.name, wf.metadata.namespace
    return RunStatus(
        run_id=name,
        state=_PHASES.get(phase, phase.lower()),
        stages=stages,
        seconds=seconds,
        url=f"{host.rstrip('/')}/workflows/{ns}/{name}",
        message=status.message if status else None,
    )


class ArgoSettings(EngineSettings):
    # The defaults are what manifests/base creates (tests/test_manifests.py checks it).
    namespace: names.DnsLabel | None = "slm-pipeline"
    service_account: names.DnsSubdomain | None = "slm-pipeline"  # has the executor's RBAC; `default` does not
    gpu_toleration: bool = True
    cache_claim: names.DnsSubdomain | None = CACHE_CLAIM  # the model-cache PVC mounted at /cache; null: none
    # Where stage outputs go: a key of the `artifact-repositories` ConfigMap in the workflow's
    # namespace (manifests/: MinIO in the dev overlay, S3 in prod); key null: the namespace's
    # or the controller's default repository.
    artifact_repository_configmap: names.DnsSubdomain = "artifact-repositories"
    artifact_repository_key: names.SecretKey | None = "slm-pipeline"


class ArgoTarget(Target):
    name = "argo"
    title = "Argo Workflows"
    short = "Argo"
    default_out = "workflow.yaml"
    sidecars = (".cron.yaml",)
    host_hint = HOST_HINT

    settings = ArgoSettings

    compile = staticmethod(compile_pipeline)
    validate = staticmethod(check_argo)

    def recognizes(self, first_doc, path):
        return str(first_doc.get("apiVersion", "")).startswith("argoproj.io/")

    def submit(self, dag, cfg, conn):
        from hera.workflows.models import WorkflowCreateRequest

        service = _service(conn)
        ns = _namespace(cfg, conn)
        wf = build_workflow(dag, cfg)
        wf.namespace = ns
        created = _call(
            service,
            "create the workflow",
            lambda: service.create_workflow(WorkflowCreateRequest(workflow=wf.build()), namespace=ns),
        )
        return _status(dag, created, service.host)

    def status(self, dag, conn, run_id):
        service = _service(conn)
        ns = _namespace(None, conn)
        wf = _call(service, f"get workflow {run_id}", lambda: service.get_workflow(run_id, namespace=ns))
        return _status(dag, wf, service.host)

    def schedule(self, dag, cfg, conn, cron, timezone):
        """A CronWorkflow: concurrencyPolicy Forbid (one run at a time) and
        startingDeadlineSeconds (a missed run is not caught up later)."""
        from hera.workflows.models import CreateCronWorkflowRequest

        service = _service(conn)
        ns = _namespace(cfg, conn)
        cw = build_cron_workflow(dag, cfg, cron=cron, timezone=timezone)
        cw.namespace = ns
        created = _call(
            service,
            "create the cron workflow",
            lambda: service.create_cron_workflow(CreateCronWorkflowRequest(cron_workflow=cw.build()), namespace=ns),
        )
        return (
            f"cron workflow {ns}/{created.metadata.name}: schedule {cron!r} ({timezone}), concurrencyPolicy Forbid, "
            f"startingDeadlineSeconds {STARTING_DEADLINE_SECONDS}"
        )


TARGET = ArgoTarget()
