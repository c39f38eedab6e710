"""What a stage is (its ports, sections, resources) and how stages form a DAG: the types the stage
registry (stages/registry.py) is written in.

The registry is data, not code paths. Every orchestration target (local, docker, KFP, AzureML,
Argo) reads it; none of them names a stage. A stage's parameters are the fields of the
config sections its view (core/params.py) declares, flattened to ``--section.key value`` flags,
so a new config field reaches every target without touching an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, NamedTuple

from core.config import Config, encode, flatten
from core.params import StageParams

# Artifact types and their names on each engine (the artifact contract: core/artifacts.py).
ARTIFACT_TYPES = {
    "Dataset": {"kfp": "Dataset", "azureml": "uri_folder"},
    "Model": {"kfp": "Model", "azureml": "custom_model"},
    "OnnxModel": {"kfp": "Model", "azureml": "custom_model"},
    "Metrics": {"kfp": "Metrics", "azureml": "uri_folder"},
}


@dataclass(frozen=True)
class Port:
    name: str
    type: str
    description: str = ""
    # A gather input of a step that runs once for all tasks (``tasks:``): it becomes one port a task,
    # ``{name}_{task}`` (StageSpec.for_tasks), wired to that task's step; that port has ``task`` and
    # ``gathers`` (this port's name) set.
    per_task: bool = False
    task: str | None = None
    gathers: str | None = None


def task_id(task: str) -> str:
    """A task's name as it appears in step and port names: an identifier (AzureML node names are)."""
    return task.replace("-", "_")


@dataclass(frozen=True)
class OutParam:
    """A small string value a stage publishes besides its artifacts (an engine's output parameter):
    KFP ``parameterValues`` in the executor output, an Argo ``outputs.parameters`` file, and the
    seal's ``parameters`` (what the local runners read). Conditions in the DAG test these."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Resources:
    cpu: int
    memory_gb: int
    gpu: int = 0


class External(NamedTuple):
    """A param naming a file or folder outside the run (data, a local base model): hashed by content
    into the cache key, and mounted into containers. With ``when``, it counts only while
    ``params[when] == equals`` (data_prep reads the base model only for its chat template)."""

    key: str
    when: str | None = None
    equals: Any = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    view: type[StageParams]  # the typed parameters ``run`` gets; its fields are the sections the stage reads
    cpu: Resources
    gpu: Resources | None = None  # what the stage asks for when runtime.device is cuda
    gpu_count: str | None = None  # a param that multiplies the GPU request (train.gpus: data-parallel)
    # A param naming the machines the stage spans (train.nodes): above 1 the engines compile the stage
    # to their multi-node runtime (engines/trainjob.py, AzureML's distribution).
    node_count: str | None = None
    external: tuple[External, ...] = ()
    # Output parameters: the stage sets ``context.output_parameters[name]`` (a string) for each.
    out_params: tuple[OutParam, ...] = ()
    # Keys of its sections the stage does not take (no flag, not in its cache key), or prefixes ending in '.'.
    ignores: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"stages.{self.name}"

    def for_tasks(self, tasks: tuple[str, ...]) -> "StageSpec":
        """This spec with each per-task input as one concrete port a task (``adapter_tone``, ...)."""
        if not any(p.per_task for p in self.inputs):
            return self
        ports = []
        for port in self.inputs:
            if not port.per_task:
                ports.append(port)
                continue
            ports += [
                Port(
                    f"{port.name}_{task_id(t)}", port.type, f"{port.description} (task {t})", task=t, gathers=port.name
                )
                for t in tasks
            ]
        return replace(self, inputs=tuple(ports))

    def tasks_in(self, flags) -> tuple[str, ...]:
        """The tasks a command line's per-task input flags name (``--adapter_tone`` -> ``tone``):
        how a gathering stage's process learns its concrete ports (task names are DNS labels)."""
        first = next((p.name for p in self.inputs if p.per_task), None)
        if first is None:
            return ()
        prefix = f"--{first}_"
        ids = [f.split("=", 1)[0][len(prefix) :] for f in flags if f.startswith(prefix)]
        return tuple(i.replace("_", "-") for i in ids)

    @property
    def sections(self) -> tuple[str, ...]:
        return self.view.sections()

    def params(self, cfg: Config | StageParams, every: bool = False) -> dict[str, Any]:
        """``{"train.lora.r": 16, ...}`` for the sections this stage reads; a default-off
        subsection's keys only with ``every`` (the flags a stage accepts)."""
        out: dict[str, Any] = {}
        for section in self.sections:
            out.update(_section_params(cfg, section, omit_off=not every))
        return {k: v for k, v in out.items() if not self.ignored(k)}

    def ignored(self, key: str) -> bool:
        """Whether ``key`` is one the stage does not take (``ignores``: keys, or prefixes ending in '.')."""
        return any(key == i or (i.endswith(".") and key.startswith(i)) for i in self.ignores)

    def external_keys(self, params: dict[str, Any]) -> list[str]:
        """The external params that count for these params."""
        return [e.key for e in self.external if e.when is None or params.get(e.when) == e.equals]

    def resources(self, cfg: Config) -> Resources:
        if not (self.gpu and cfg.runtime.device == "cuda"):
            return self.cpu
        n = int(self.params(cfg).get(self.gpu_count, 1)) if self.gpu_count else 1
        if n <= 1:
            return self.gpu
        return Resources(cpu=self.gpu.cpu * n, memory_gb=self.gpu.memory_gb * n, gpu=self.gpu.gpu * n)

    def nodes(self, cfg: Config) -> int:
        """The machines the stage runs on; the resources are per machine."""
        return int(self.params(cfg).get(self.node_count) or 1) if self.node_count else 1

    def uses_gpu(self, cfg: Config) -> bool:
        return self.resources(cfg).gpu > 0

    def argv(self, params: dict[str, Any], inputs: dict[str, str], outputs: dict[str, str]) -> list[str]:
        """The one command line every target runs. Values may be target placeholders."""
        args = ["python", "-m", self.module]
        for port in self.inputs:
            args += [f"--{port.name}", inputs[port.name]]
        for port in self.outputs:
            args += [f"--{port.name}", outputs[port.name]]
        unset = self.unset_params()
        for key, value in params.items():
            if value is None and key in unset:
                continue  # the stage's own default is null too: no `--model.revision null` flag
            args += [f"--{key}", value if _is_placeholder(value) else encode(value)]
        return args

    def unset_params(self) -> frozenset[str]:
        """The parameters whose default is null."""
        return frozenset(k for k in _null_defaults(self.sections) if not self.ignored(k))


def per_task_inputs(spec: StageSpec, inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"adapter": {"tone": path, ...}}``: a gathering stage's per-task inputs, by port and task."""
    out: dict[str, dict[str, Any]] = {}
    for port in spec.inputs:
        if port.gathers:
            out.setdefault(port.gathers, {})[port.task] = inputs[port.name]
    return out


@cache
def _null_defaults(sections: tuple[str, ...]) -> frozenset[str]:
    defaults = Config()
    return frozenset(k for s in sections for k, v in _section_params(defaults, s).items() if v is None)


def _section_params(cfg: Config, section: str, omit_off: bool = False) -> dict[str, Any]:
    """A section's flat parameters; a list section (``tasks``) is one parameter: what each item sets
    (its defaults are the schema's, so the stage rebuilds the same items)."""
    value = getattr(cfg, section)
    if value is None or isinstance(value, list):
        return {section: None if value is None else [v.model_dump(mode="json", exclude_defaults=True) for v in value]}
    return flatten(value, section + ".", omit_off=omit_off)


def _is_placeholder(value) -> bool:
    return not isinstance(value, (str, int, float, bool, list, dict, type(None)))


class PortRef(NamedTuple):
    """An upstream step's output, as a wire names it: ``"train.adapter"`` is parsed here, once."""

    stage: str
    output: str

    @classmethod
    def parse(cls, wire: "str | PortRef") -> "PortRef":
        if isinstance(wire, PortRef):
            return wire
        stage, dot, output = str(wire).partition(".")
        if not (stage and dot and output) or "." in output:
            raise ValueError(f"wire {wire!r}: expected 'stage.output'")
        return cls(stage, output)

    def __str__(self) -> str:
        return f"{self.stage}.{self.output}"


@dataclass(frozen=True)
class Step:
    """One stage placed in the DAG, with its inputs wired to upstream outputs. ``task``: the task of a
    multi-task DAG this step runs for (its parameters are that task's config, core/tasks.py)."""

    spec: StageSpec
    wires: dict[str, PortRef] = field(default_factory=dict)  # input name -> the upstream output
    task: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "wires", {name: PortRef.parse(w) for name, w in self.wires.items()})

    @property
    def name(self) -> str:
        return step_name(self.spec.name, self.task)

    @property
    def chain_key(self) -> str:
        """Its key in a model's lineage chain (core/lineage.py): the stage, ``stage[task]`` for a task's."""
        return self.spec.name if self.task is None else f"{self.spec.name}[{self.task}]"

    def config(self, cfg: Config) -> Config:
        """The config this step runs with: its task's single-task config, or ``cfg``."""
        if self.task is None:
            return cfg
        from core.tasks import task_config

        return task_config(cfg, self.task)

    def params(self, cfg: Config) -> dict[str, Any]:
        return self.spec.params(self.config(cfg))

    def binds(self, key: str) -> bool:
        """Whether the run parameter ``key`` reaches this step: not a key its task owns."""
        if self.task is None:
            return True
        from core.tasks import task_owned

        return not task_owned(key)

    def upstream(self) -> set[str]:
        return {ref.stage for ref in self.wires.values()}


@dataclass(frozen=True)
class Condition:
    """Run the steps downstream of ``step`` only when its output parameter ``param`` equals
    ``equals``; otherwise the run ends early, successfully, with ``reason`` as its status.
    Each engine uses its own conditional (KFP ``dsl.If``, Argo ``when``); the local runners
    read the parameter from the step's seal."""

    step: str
    param: str
    equals: str
    reason: str = "condition not met"


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]
    condition: Condition | None = None

    def __post_init__(self):
        if self.condition is not None:
            c = self.condition
            owner = next((s for s in self.steps if s.name == c.step), None)
            if owner is None or c.param not in {p.name for p in owner.spec.out_params}:
                raise ValueError(f"condition: {c.step}.{c.param} is not an output parameter of a step")
        seen: dict[str, Step] = {}
        for s in self.steps:
            missing = {p.name for p in s.spec.inputs} - set(s.wires)
            extra = set(s.wires) - {p.name for p in s.spec.inputs}
            if missing or extra:
                raise ValueError(f"{s.name}: unwired inputs {sorted(missing)}, unknown inputs {sorted(extra)}")
            for port in s.spec.inputs:
                up_name, out_name = s.wires[port.name]
                if up_name not in seen:
                    raise ValueError(f"{s.name}.{port.name}: {up_name!r} is not an earlier step")
                out = {p.name: p for p in seen[up_name].spec.outputs}.get(out_name)
                if out is None or out.type != port.type:
                    raise ValueError(f"{s.name}.{port.name}: {s.wires[port.name]} is not a {port.type} output")
            seen[s.name] = s

    def __iter__(self):
        return iter(self.steps)

    def __getitem__(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in pipeline {self.name!r}; its stages: {', '.join(s.name for s in self)}")

    def gated(self) -> set[str]:
        """The steps that run only when the condition holds (all of them without one: none)."""
        return self.downstream(self.condition.step) if self.condition else set()

    def downstream(self, name: str) -> set[str]:
        """Every step that depends, directly or not, on ``name``."""
        out: set[str] = set()
        for s in self.steps:
            if name in s.upstream() or out & s.upstream():
                out.add(s.name)
        return out


def step_name(stage: str, task: str | None = None) -> str:
    """A step's name in the DAG: its stage's, with its task's for a step that runs once a task."""
    return stage if task is None else f"{stage}_{task_id(task)}"


@dataclass(frozen=True)
class TaskStep:
    """A step of a multi-task DAG: once a task (``each_task``; its wires to other each-task steps
    stay within the task), or once for all tasks, gathering their outputs through per-task ports."""

    spec: StageSpec
    wires: dict[str, str]
    each_task: bool = False

    def expand(self, tasks: tuple[str, ...], each: set[str]) -> list[Step]:
        """The concrete steps for ``tasks``; ``each``: the stages that run once a task."""
        refs = {k: PortRef.parse(w) for k, w in self.wires.items()}
        if self.each_task:
            return [
                Step(
                    self.spec,
                    {k: PortRef(step_name(r.stage, t if r.stage in each else None), r.output) for k, r in refs.items()},
                    task=t,
                )
                for t in tasks
            ]
        wires: dict[str, PortRef] = {}
        for port in self.spec.inputs:
            ref = refs[port.name]
            if port.per_task:
                wires.update({f"{port.name}_{task_id(t)}": PortRef(step_name(ref.stage, t), ref.output) for t in tasks})
            else:
                wires[port.name] = ref
        return [Step(self.spec.for_tasks(tasks), wires)]


@dataclass(frozen=True)
class TaskPipeline:
    """The DAG of a multi-task job (``tasks:``), written once; :meth:`expand` makes the concrete
    :class:`Pipeline` for a config's tasks, which every engine renders as it renders the
    single-task one."""

    name: str
    steps: tuple[TaskStep, ...]

    def __post_init__(self):
        self.expand(("a", "b"))  # the wiring is checked at import, as a Pipeline's is

    def expand(self, tasks) -> Pipeline:
        tasks = tuple(tasks)
        each = {s.spec.name for s in self.steps if s.each_task}
        return Pipeline(self.name, tuple(step for s in self.steps for step in s.expand(tasks, each)))
