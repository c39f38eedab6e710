"""The task plan: what a step runs on a cluster, decided once for every engine.

:func:`plan_pipeline` makes one :class:`TaskPlan` per DAG step: its image, its command line as a
template with typed references (a parameter, an input path, an output path), its parameters (a
constant, or bound to the run parameter of the same key), environment, secret, resources per node
and node count, retry policy, mounts and whether it promotes. KFP, Argo and AzureML only render
a plan in their own syntax (engines/kfp.py, argo.py, azureml.py, and trainjob.py for a step on
several nodes); where an engine differs (Argo's retry expression, AzureML's Key Vault reference,
KFP's executor-input flag), the plan holds the engine-neutral fact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from core.config import Config
from core.spec import OutParam, Pipeline, Port, PortRef, Resources, StageSpec, Step
from runtime import promotion

from .compile_common import (
    CACHE_ENV,
    CACHE_MOUNT,
    DETERMINISTIC_EXIT_CODES,
    STAGE_ENV,
    bound_run_keys,
    check_names,
    image_for,
    k8s_name,
    needs_hf_token,
    param_name,
    run_parameters,
    settings,
    task_params,
    value_kind,
)

# KFP's and Argo's backoff between tries: doubled each time, at most an hour. Not a deadline
# from the first attempt (Argo's maxDuration): a stage that ran longer would never be retried.
BACKOFF_FACTOR = 2
BACKOFF_CAP_SECONDS = 3600


@dataclass(frozen=True)
class ParamArg:
    """A parameter's value in the command line (the ``train.lora.r`` of ``--train.lora.r``)."""

    key: str


@dataclass(frozen=True)
class InputArg:
    """The path of an input port in the command line."""

    port: str


@dataclass(frozen=True)
class OutputArg:
    """The path of an output port in the command line."""

    port: str


Arg = Union[str, ParamArg, InputArg, OutputArg]


@dataclass(frozen=True)
class Param:
    """A parameter a task declares: ``run`` true, it takes the run parameter of its key (``value``
    is that parameter's default); false, ``value`` is compiled in."""

    key: str
    value: Any
    run: bool

    @property
    def name(self) -> str:
        return param_name(self.key)

    @property
    def kind(self) -> str:
        return value_kind(self.value)


@dataclass(frozen=True)
class SecretEnv:
    """An env var read from a secret by reference (a Kubernetes Secret's key; on AzureML the name of
    a Key Vault secret). Optional: only gated or private models need the token."""

    secret: str
    key: str
    env: str
    optional: bool = True


@dataclass(frozen=True)
class Retry:
    """Retry failures ``limit`` times, waiting ``backoff_seconds`` times ``factor`` per try up to
    ``cap_seconds``; never after an exit code in ``fatal_exit_codes`` (no retry can fix those)."""

    limit: int
    backoff_seconds: int
    factor: int = BACKOFF_FACTOR
    cap_seconds: int = BACKOFF_CAP_SECONDS
    fatal_exit_codes: tuple[int, ...] = DETERMINISTIC_EXIT_CODES


@dataclass(frozen=True)
class TaskPlan:
    """One step as every engine compiles it (dict fields are not to be changed by a renderer)."""

    name: str  # the step's name (a task's step: ``train_tone``)
    k8s_name: str
    spec: StageSpec  # the stage's ports, summary and module: what holds under every config
    config_name: str  # the name of the config the step runs with (a task's: ``<name>-<task>``)
    image: str
    argv: tuple[Arg, ...]  # the stage's command line, python -m first
    params: tuple[Param, ...]
    wires: dict[str, PortRef]  # input port -> the upstream step's output
    env: dict[str, str]
    secret: SecretEnv | None
    resources: Resources  # per node
    nodes: int
    procs_per_node: int
    launcher_resources: Resources  # a task that only launches the nodes' job, or copies for it
    retry: Retry
    mounts: dict[str, str]  # volume claim -> mount path
    promotes: bool  # its gate passed when it returns (runtime/promotion.py)

    @property
    def inputs(self) -> tuple[Port, ...]:
        return self.spec.inputs

    @property
    def outputs(self) -> tuple[Port, ...]:
        return self.spec.outputs

    @property
    def out_params(self) -> tuple[OutParam, ...]:
        return self.spec.out_params

    @property
    def bound_keys(self) -> list[str]:
        """The run parameters the task takes from the pipeline's inputs."""
        return [p.key for p in self.params if p.run]

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    def values(self) -> dict[str, Any]:
        """``{"train.lora.r": 16, ...}``: the config's value of each parameter."""
        return {p.key: p.value for p in self.params}

    def render_argv(
        self, param: Callable[[Param], Any], input: Callable[[str], Any], output: Callable[[str], Any]
    ) -> list[Any]:
        """The command line with each reference rendered by the engine's function for its kind."""
        by_key = {p.key: p for p in self.params}
        rendered: dict[type, Callable[[Any], Any]] = {
            ParamArg: lambda a: param(by_key[a.key]),
            InputArg: lambda a: input(a.port),
            OutputArg: lambda a: output(a.port),
        }
        return [a if isinstance(a, str) else rendered[type(a)](a) for a in self.argv]


@dataclass(frozen=True)
class PipelinePlan:
    """Every step's plan, in DAG order, the run parameters and the engine's typed settings."""

    settings: Any
    run_params: dict[str, Any]
    tasks: tuple[TaskPlan, ...]

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, name: str) -> TaskPlan:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no step {name!r} in the plan; its steps: {', '.join(t.name for t in self.tasks)}")


def plan_pipeline(dag: Pipeline, cfg: Config, target: str) -> PipelinePlan:
    """The plans of ``dag``'s steps under ``cfg`` for the engine ``target`` (its settings)."""
    s = settings(cfg, target)
    check_names(dag, cfg)
    run_params = run_parameters(dag, cfg)
    return PipelinePlan(s, run_params, tuple(plan(step, cfg, s, run_params) for step in dag))


def plan(step: Step, cfg: Config, s, run_params: dict[str, Any]) -> TaskPlan:
    """One step's plan; ``cfg``: the pipeline's config (a task's step runs with its task's,
    ``step.config``), ``s``: the engine's settings."""
    spec, scfg = step.spec, step.config(cfg)
    values = task_params(spec, scfg)
    bound = set(bound_run_keys(step, cfg, run_params))
    params = tuple(Param(k, v, k in bound) for k, v in values.items())
    claim = getattr(s, "cache_claim", None)  # AzureML has no cache volume
    env = {**STAGE_ENV, **(CACHE_ENV if claim else {})}
    if promotion.promotes(spec):
        env.update(s.registry_env(scfg.name))
    secret = None
    if s.hf_token_secret and needs_hf_token(spec, scfg):
        secret = SecretEnv(s.hf_token_secret, s.hf_token_key, s.hf_token_env)
    return TaskPlan(
        name=step.name,
        k8s_name=k8s_name(step.name),
        spec=spec,
        config_name=scfg.name,
        image=image_for(spec, scfg),
        argv=_argv_template(spec, values),
        params=params,
        wires=dict(step.wires),
        env=env,
        secret=secret,
        resources=spec.resources(scfg),
        nodes=spec.nodes(scfg),
        procs_per_node=int(spec.params(scfg).get(spec.gpu_count, 1)) if spec.gpu_count else 1,
        launcher_resources=spec.cpu,
        retry=Retry(s.retries, s.retry_backoff_seconds),
        mounts={claim: CACHE_MOUNT} if claim else {},
        promotes=promotion.promotes(spec),
    )


def _argv_template(spec: StageSpec, values: dict[str, Any]) -> tuple[Arg, ...]:
    return tuple(
        spec.argv(
            {k: ParamArg(k) for k in values},
            {p.name: InputArg(p.name) for p in spec.inputs},
            {p.name: OutputArg(p.name) for p in spec.outputs},
        )
    )
