"""Strict offline checks of a compiled pipeline file, references included.

    python pipeline.py validate [--target kfp|azureml|argo] PATH

Each engine's own schema is the first check (KFP: the ``PipelineSpec`` and
``PlatformSpec`` protos; AzureML: ``load_job`` + ``_validate()``; Argo: its CRD schema, CEL
rules included, the authority, and its JSON schema where no stricter, unknown keys
rejected: ``argo_schema.py``). None of them resolves references, so every validator then
checks the wiring itself, as the engine's controller or driver would: each task's
component/template exists, each upstream reference names an existing task and one of its
outputs of a type the engine accepts, each required input is bound, each placeholder in a
command names a declared input, and the graph has no cycle. What a component or template
does not declare is ignored, as the engines ignore it. Any engine file is checked, not only
ours (tests/test_validate_suites.py runs the engines' own example suites). What no schema
checks is checked here too: every image is a valid image reference, KFP's CPU and memory
are Kubernetes quantities, and an Argo object's name, namespace and labels follow the
Kubernetes rules. Every problem found is listed in one ``UserError``.
"""

from __future__ import annotations

import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from core import cron, names
from core.errors import UserError
from core.io import YamlSyntaxError, load_file


def validate_file(path: str | Path, target: str | None = None, strict: bool = False) -> str:
    """Validate ``path`` (guessing the target when None); return the target. Raises UserError.
    The targets and their checks are the registry's (engines/base.py): ``Target.validate``.
    ``strict``: images in a registry no cluster reaches (localhost, ...) are a problem too."""
    from .base import get

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    found = guess_target(path)  # also with --target: a file that is no engine's gets one line, not a schema dump
    target = target or found
    problems = get(target).validate(path)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise UserError(f"{path}: not a valid {target} pipeline ({len(problems)} problem(s)):\n{shown}{more}")
    warning = registry_warning(compiled_images(path)) if strict else None
    if warning:
        raise UserError(f"{path}: {warning} (validate --strict)")
    return target


def guess_target(path: Path) -> str:
    """The engine whose ``Target.recognizes`` the file (a folder: its pipeline.yml), by the first
    document one recognizes. A file that is not YAML, or none of whose documents any engine
    recognizes, is "not a pipeline file"."""
    from .base import registry

    why = ""
    if path.is_dir():
        docs = [{"_folder": True}]
    else:
        try:
            docs = [d for d in _load_yaml_docs(path) if isinstance(d, dict)]
        except YamlSyntaxError as e:
            docs, why = [], f"; this is not YAML ({str(e).split(': not valid YAML: ', 1)[-1]})"
    for doc in docs or [{}]:  # a file may hold other objects first (a ConfigMap the Workflow reads)
        for name, target in registry().items():
            if target.recognizes(doc, path):
                return name
    engines = [t.short or t.name for t in registry().values()]
    expected = ", ".join(engines[:-1]) + " or " + engines[-1] if len(engines) > 1 else engines[0]
    raise UserError(f"{path}: not a pipeline file: expected a compiled {expected} pipeline (pipeline.py compile){why}")


def _load_yaml_docs(path: Path) -> list:
    """Every document of a compiled file, through the one bounded loader (core/io.py):
    a regular file, size, depth and alias-expansion limits, duplicate keys refused."""
    return load_file(path, all_docs=True)


def cron_problems(where: str, exprs: list, dialect: str) -> list[str]:
    """The engine's cron dialect (core/cron.py), as compile and the config apply it."""
    problems = []
    for expr in exprs:
        try:
            cron.parse(expr, dialect)
        except ValueError as e:
            problems.append(f"{where}: {e}")
    return problems


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A dependency cycle in ``{node: upstream nodes}``, as [a, b, ..., a] where each depends on the next; or None."""
    try:  # sorted: the same graph reports the same cycle whatever the order it was read in
        TopologicalSorter({n: sorted(edges[n]) for n in sorted(edges)}).prepare()
    except CycleError as e:
        return e.args[1][::-1]  # graphlib lists each node before the one that depends on it
    return None


# =======================================================================================
# What no engine schema checks: image references, quantities, Kubernetes names

# The image reference grammar of distribution/reference, the parser docker, containerd and
# the kubelet use: [registry[:port]/]path[:tag][@digest], path components lower case.
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|[-]+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_IMAGE_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_IMAGE_REF = re.compile(
    rf"^(?P<name>{_IMAGE_NAME})(?::(?P<tag>[\w][\w.-]{{0,127}}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}))?$"
)
# Kubernetes' resource.Quantity (the pattern its OpenAPI schema and Argo's CRD carry).
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# The Kubernetes patterns are the config's (core/names.py). Compile may ask more of its own output
# (a whole generateName, the SDK's pipeline names); validate asks what the engine asks.
_DNS1123_LABEL = names.DNS1123_LABEL
_DNS1123_SUBDOMAIN = names.DNS1123_SUBDOMAIN
_LABEL_NAME = names.LABEL_NAME


def name_problems(where: str, value: Any, rule) -> list[str]:
    try:
        rule(value)
    except ValueError as e:
        return [f"{where}: {e}"]
    return []


def image_problem(where: str, image: Any) -> str | None:
    """Why ``image`` is not a valid image reference, or None. Engine placeholders are left alone."""
    if not isinstance(image, str) or not image:
        return f"{where}: no image"
    if "{{" in image or "${{" in image:
        return None
    m = _IMAGE_REF.match(image)
    first, slash, _ = image.partition("/")
    # As docker parses a name: the first part is a registry only if it has '.' or ':' or is localhost.
    is_registry = slash and ("." in first or ":" in first or first == "localhost")
    if not m or (not is_registry and m.group("name") != m.group("name").lower()):
        return f"{where}: {image!r} is not a valid image reference ([registry/]name[:tag][@digest], name in lower case)"
    if len(m.group("name")) > 255:
        return f"{where}: image name longer than 255 characters"
    return None


def local_registry(image: str) -> bool:
    """Whether cluster nodes cannot pull ``image``: no registry host (a bare name means Docker Hub,
    where locally built images are not), or a host only this machine knows (localhost, 127.*,
    [::1], *.local)."""
    first, slash, _ = image.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return True
    host = first.split("]")[0] + "]" if first.startswith("[") else first.rsplit(":", 1)[0]
    host = host.lower()
    return host in ("localhost", "[::1]", "0.0.0.0") or host.startswith("127.") or host.endswith(".local")


def registry_warning(images) -> str | None:
    """One line when some of ``images`` (compiled image references) point at a registry no cluster can reach."""
    local = sorted({i for i in images if isinstance(i, str) and "{{" not in i and local_registry(i)})
    if not local:
        return None
    return (
        f"the images ({local[0]}{', ...' if len(local) > 1 else ''}) are in no registry a cluster can pull from: "
        "push them (make push REGISTRY=host/team) and set images.registry to that registry"
    )


def compiled_images(path: Path) -> list[str]:
    """Every ``image:`` value in a compiled file, or in the YAML files of a compiled folder (AzureML)."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".yml", ".yaml")) if path.is_dir() else [path]
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for f in files:
        walk(_load_yaml_docs(f))
    return found


def quantity_problem(where: str, value: Any) -> str | None:
    """Why ``value`` is not a Kubernetes quantity (``500m``, ``2``, ``4Gi``), or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return None
    if isinstance(value, str) and _QUANTITY.match(value) and not value.startswith("-"):
        return None
    return f"{where}: {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)"


def k8s_metadata_problems(where: str, meta: Any, max_name: int = 253) -> list[str]:
    """What the API server checks in every object's metadata before any schema: names and labels."""
    if not isinstance(meta, dict):
        return [f"{where}: metadata must be a mapping"]
    problems = []
    name, prefix = meta.get("name"), meta.get("generateName")
    if name is None and prefix is None:
        problems.append(f"{where}: needs metadata.name or metadata.generateName")
    if name is not None and (not isinstance(name, str) or not _DNS1123_SUBDOMAIN.match(name) or len(name) > max_name):
        problems.append(
            f"{where}.name: {name!r} is not a DNS-1123 name of at most {max_name} characters (a-z, 0-9, '-', '.')"
        )
    # The API server checks a generateName with its trailing '-' masked, cuts it to 58 characters
    # and appends 5 random ones (apiserver/pkg/storage/names): a long prefix is no error, but the
    # name it makes must fit max_name.
    if prefix is not None:
        masked = prefix[:-1] + "a" if isinstance(prefix, str) and prefix.endswith("-") else prefix
        if not isinstance(prefix, str) or not _DNS1123_SUBDOMAIN.match(masked) or len(prefix) > 253:
            problems.append(f"{where}.generateName: {prefix!r} is not a DNS-1123 name prefix (a-z, 0-9, '-', '.')")
        elif min(len(prefix), 58) + 5 > max_name:
            problems.append(
                f"{where}.generateName: {prefix!r} makes names of {min(len(prefix), 58) + 5} characters; "
                f"at most {max_name} are allowed (a prefix of at most {max_name - 5})"
            )
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not _DNS1123_LABEL.match(ns) or len(ns) > 63):
        problems.append(f"{where}.namespace: {ns!r} is not a DNS-1123 label (a-z, 0-9, '-'; at most 63)")
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            pre, _, nm = str(key).rpartition("/")
            if (
                (pre and (not _DNS1123_SUBDOMAIN.match(pre) or len(pre) > 253))
                or not _LABEL_NAME.match(nm)
                or len(nm) > 63
            ):
                problems.append(f"{where}.{field}: key {key!r} is not a valid Kubernetes key ([prefix/]name)")
            if field == "labels" and (
                not isinstance(value, str) or (value and (not _LABEL_NAME.match(value) or len(value) > 63))
            ):
                problems.append(
                    f"{where}.labels.{key}: {value!r} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ .)"
                )
    return problems


# =======================================================================================
# Kubeflow Pipelines

_KFP_PARAM_TYPES = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int, float),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}
_KFP_PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\]")


def _kfp_type_ok(value: Any, ptype: str) -> bool:
    kinds = _KFP_PARAM_TYPES.get(ptype)
    if kinds is None:
        return True
    if ptype != "BOOLEAN" and isinstance(value, bool):
        return False
    if ptype == "NUMBER_INTEGER" and isinstance(value, float) and not value.is_integer():
        return False
    return isinstance(value, kinds)


# What KFP's API server asks of an uploaded spec (backend/src/apiserver/template/v2_template.go):
# schema version 2.1.0 and a name its (unanchored) pattern finds; the SDK's own name rule is
# stricter, and compile applies that one (core/names.py).
_KFP_SCHEMA_VERSION = "2.1.0"
_KFP_SERVER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _kfp_api_server_problems(spec: dict) -> list[str]:
    problems = []
    if spec.get("schemaVersion") != _KFP_SCHEMA_VERSION:
        problems.append(
            f"schemaVersion: KFP only supports schema version {_KFP_SCHEMA_VERSION}, "
            f"but the pipeline spec has version {spec.get('schemaVersion')!r}"
        )
    name = (spec.get("pipelineInfo") or {}).get("name")
    if not name:
        problems.append("pipelineInfo.name: invalid v2 pipeline spec: name is empty")
    elif not isinstance(name, str) or not _KFP_SERVER_NAME.search(name):
        problems.append(
            f"pipelineInfo.name: {name!r}: invalid v2 pipeline spec: name should consist of lower case "
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return problems


def check_kfp(path: Path) -> list[str]:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = _load_yaml_docs(path)
    if not docs or not isinstance(docs[0], dict):
        return ["empty file, or the first document is not a mapping"]
    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as e:
        return [f"PipelineSpec: {e}"]
    problems = _kfp_platform_spec_problems(docs[1:])
    problems += _kfp_recurring_run_problems(path)
    spec = docs[0]
    problems += _kfp_api_server_problems(spec)
    components = spec.get("components", {})
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    if "root" not in spec or "dag" not in spec["root"]:
        return problems + ["root: no dag"]

    users, found = _kfp_component_problems(components, executors)
    problems += found
    problems += _kfp_executor_problems(components, executors, users)

    # Every DAG (root and any sub-DAG component): tasks, their wiring and bindings.
    dags = [("root", spec["root"])] + [(n, c) for n, c in components.items() if "dag" in c]
    loop_items = _kfp_loop_items(components, spec["root"])
    for owner, holder in dags:
        problems += _check_kfp_dag(owner, holder, components, loop_items)

    problems += _kfp_platform_executor_problems(docs[1:], executors)
    return problems


def _kfp_platform_spec_problems(extras: list) -> list[str]:
    """The documents after the pipeline spec are platform specs; each must parse as the proto."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    problems: list[str] = []
    for extra in extras:
        try:
            json_format.ParseDict(extra, pipeline_spec_pb2.PlatformSpec())
        except json_format.ParseError as e:
            problems.append(f"PlatformSpec: {e}")
    return problems


def _kfp_recurring_run_problems(path: Path) -> list[str]:
    """Compile writes a recurring run beside the pipeline; its cron must be one KFP accepts."""
    sidecar = path.with_name(path.stem + ".recurring-run.json")
    if not sidecar.is_file():
        return []
    body = load_file(sidecar)
    expr = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron") if isinstance(body, dict) else None
    return cron_problems(f"{sidecar.name}: trigger.cron_schedule.cron", [expr], "kfp")


def _kfp_component_problems(components: dict, executors: dict) -> tuple[dict[str, list[str]], list[str]]:
    """Components -> executors (the components using each executor), and each component's
    parameter defaults against their declared types."""
    problems: list[str] = []
    users: dict[str, list[str]] = {}
    for cname, comp in components.items():
        label = comp.get("executorLabel")
        if label is not None:
            if label not in executors:
                problems.append(f"components.{cname}.executorLabel: no executor {label!r} in deploymentSpec")
            else:
                users.setdefault(label, []).append(cname)
        for pname, pdef in comp.get("inputDefinitions", {}).get("parameters", {}).items():
            if "defaultValue" in pdef and not _kfp_type_ok(pdef["defaultValue"], pdef.get("parameterType")):
                problems.append(
                    f"components.{cname}.inputDefinitions.parameters.{pname}: default {pdef['defaultValue']!r} "
                    f"is not a {pdef.get('parameterType')}"
                )
    return users, problems


def _kfp_executor_problems(components: dict, executors: dict, users: dict[str, list[str]]) -> list[str]:
    """Each container executor's image and resources, the placeholders its command uses
    (declared by every component using it), and executors no component uses."""
    problems: list[str] = []
    for label, ex in executors.items():
        container = ex.get("container")
        if container is None:
            continue
        bad = image_problem(f"deploymentSpec.executors.{label}.container.image", container.get("image"))
        if bad:
            problems.append(bad)
        problems += _kfp_resource_problems(label, container)
        text = " ".join(map(str, container.get("command", []) + container.get("args", [])))
        for comp_name in users.get(label, []):
            comp = components[comp_name]
            for io, kind, name in _KFP_PLACEHOLDER.findall(text):
                declared = comp.get(f"{'input' if io == 'inputs' else 'output'}Definitions", {}).get(kind, {})
                if name not in declared:
                    problems.append(
                        f"deploymentSpec.executors.{label}: placeholder {io}.{kind}['{name}'] is not declared by "
                        f"{comp_name}"
                    )
    for label in executors:
        if label not in users:
            problems.append(f"deploymentSpec.executors.{label}: no component uses it")
    return problems


def _kfp_resource_problems(label: str, container: dict) -> list[str]:
    """CPU and memory are Kubernetes quantities; no schema checks them."""
    problems = []
    for field in ("resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit", "resourceMemoryRequest"):
        value = (container.get("resources") or {}).get(field)
        if value is not None and "{{$" not in str(value):  # a placeholder, set from a task input
            bad = quantity_problem(f"deploymentSpec.executors.{label}.container.resources.{field}", value)
            if bad:
                problems.append(bad)
    return problems


def _kfp_platform_executor_problems(extras: list, executors: dict) -> list[str]:
    """A platform spec's Kubernetes settings name existing executors, and each secret as env
    has a name and keys."""
    problems = []
    for extra in extras:
        k8s = (extra.get("platforms") or {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        for label, conf in k8s.items():
            if label not in executors:
                problems.append(f"platform spec: executor {label!r} is not in deploymentSpec.executors")
            for j, sec in enumerate(conf.get("secretAsEnv", [])):
                name = sec.get("secretName") or sec.get("secretNameParameter")  # a constant, or a task input
                if not name or not sec.get("keyToEnv"):
                    problems.append(f"platform spec: {label}.secretAsEnv[{j}]: needs a secret name and keyToEnv")
    return problems


# What KFP's driver accepts for an input of each type (backend/src/v2/driver/resolve.go): a
# STRING input takes any value (as JSON text), numbers are one kind, a STRUCT input also takes
# a task's final status.
_KFP_ACCEPTS = {
    "NUMBER_INTEGER": {"NUMBER_INTEGER", "NUMBER_DOUBLE"},
    "NUMBER_DOUBLE": {"NUMBER_INTEGER", "NUMBER_DOUBLE"},
    "STRUCT": {"STRUCT", "TASK_FINAL_STATUS", "TASK_CONFIG"},
}
_KFP_CONDITION_INPUT = re.compile(r"inputs\.(parameter_values|artifacts)\[['\"]([^'\"]+)['\"]\]")


def _kfp_accepts(want: str | None, got: str | None) -> bool:
    return not want or not got or want == "STRING" or got in _KFP_ACCEPTS.get(want, {want})


def _kfp_outputs(components: dict, task: dict | None, kind: str) -> dict:
    comp = components.get(((task or {}).get("componentRef") or {}).get("name"), {})
    return (comp.get("outputDefinitions") or {}).get(kind) or {}


def _kfp_loop_items(components: dict, root: dict) -> set[tuple[str, str]]:
    """``(component, input)`` pairs that a loop's iterator binds: a ParallelFor's item,
    whose value is one element of the list, so its declared type says little."""
    items = set()
    for holder in [root] + list(components.values()):
        for task in ((holder.get("dag") or {}).get("tasks") or {}).values():
            ref = (task.get("componentRef") or {}).get("name")
            for key in ("parameterIterator", "artifactIterator"):
                if (task.get(key) or {}).get("itemInput"):
                    items.add((ref, task[key]["itemInput"]))
    return items


def _check_kfp_dag(owner: str, holder: dict, components: dict, loop_items: set) -> list[str]:
    """One DAG (the root, or a sub-DAG: a pipeline in a pipeline, a loop, a condition, an exit
    handler's body): each task's component, inputs, iterator and condition, the DAG's
    outputs, no cycle. Inputs a component does not declare are the SDK's pipeline channels
    (placeholders of task settings); the driver ignores them, so does this."""
    problems: list[str] = []
    tasks = holder["dag"].get("tasks", {})
    edges: dict[str, set[str]] = {}
    for tname, task in tasks.items():
        where = f"{owner}.dag.tasks.{tname}"
        ref = task.get("componentRef", {}).get("name")
        if ref not in components:
            problems.append(f"{where}.componentRef: no component {ref!r}")
            continue
        deps = set(task.get("dependentTasks", []))
        problems += [f"{where}.dependentTasks: no task {d!r}" for d in sorted(deps - set(tasks))]
        edges[tname] = deps & set(tasks)
        ctx = (owner, holder, tasks, components, loop_items)
        problems += _kfp_artifact_bindings(where, task, deps, edges[tname], ctx)
        problems += _kfp_parameter_bindings(where, task, ctx)
        problems += _kfp_iterator_and_condition(where, task, ref, components)
    problems += _kfp_dag_outputs(owner, holder, tasks, components)
    cycle = _cycle(edges)
    if cycle:
        problems.append(f"{owner}.dag: dependency cycle {' -> '.join(cycle)}")
    return problems


def _kfp_artifact_bindings(where: str, task: dict, deps: set, edges: set, ctx) -> list[str]:
    owner, holder, tasks, components, _ = ctx
    problems = []
    defs = components[task["componentRef"]["name"]].get("inputDefinitions", {}).get("artifacts", {})
    bound = task.get("inputs", {}).get("artifacts", {})
    for aname, binding in bound.items():
        want = (defs.get(aname) or {}).get("artifactType", {}).get("schemaTitle")
        if "taskOutputArtifact" in binding:
            src = binding["taskOutputArtifact"]
            prod, key = src.get("producerTask"), src.get("outputArtifactKey")
            if prod not in tasks:
                problems.append(f"{where}.inputs.artifacts.{aname}: producer task {prod!r} does not exist")
                continue
            out = _kfp_outputs(components, tasks[prod], "artifacts").get(key)
            if out is None:
                problems.append(f"{where}.inputs.artifacts.{aname}: task {prod!r} has no output artifact {key!r}")
                continue
            got = out.get("artifactType", {}).get("schemaTitle")
            if want and got != want and "system.Artifact" not in (want, got):
                problems.append(f"{where}.inputs.artifacts.{aname}: expects {want}, but {prod}.{key} is {got}")
            if prod not in deps:
                problems.append(f"{where}: consumes {prod}.{key} but does not list {prod!r} in dependentTasks")
            edges.add(prod)
        elif "componentInputArtifact" in binding:
            name = binding["componentInputArtifact"]
            if name not in holder.get("inputDefinitions", {}).get("artifacts", {}):
                problems.append(f"{where}.inputs.artifacts.{aname}: {owner} has no input artifact {name!r}")
        else:
            problems.append(f"{where}.inputs.artifacts.{aname}: bound to nothing")
    item = (task.get("artifactIterator") or {}).get("itemInput")
    for aname, decl in defs.items():
        if aname not in bound and aname != item and not decl.get("isOptional"):
            problems.append(
                f"{where}: required input artifact {aname!r} of {task['componentRef']['name']} is not bound"
            )
    return problems


def _kfp_parameter_bindings(where: str, task: dict, ctx) -> list[str]:
    owner, holder, tasks, components, loop_items = ctx
    problems = []
    ref = task["componentRef"]["name"]
    defs = components[ref].get("inputDefinitions", {}).get("parameters", {})
    own = holder.get("inputDefinitions", {}).get("parameters", {})
    bound = task.get("inputs", {}).get("parameters", {})
    for pname, binding in bound.items():
        want = (defs.get(pname) or {}).get("parameterType")
        if "parameterExpressionSelector" in binding:  # a field of the value: its type is known at run time only
            want = None
        if "componentInputParameter" in binding:
            name = binding["componentInputParameter"]
            got = (own.get(name) or {}).get("parameterType")
            if name not in own:
                problems.append(f"{where}.inputs.parameters.{pname}: {owner} has no input parameter {name!r}")
            elif (owner, name) not in loop_items and not _kfp_accepts(want, got):
                problems.append(f"{where}.inputs.parameters.{pname}: expects {want}, but {owner}'s {name} is {got}")
        elif "runtimeValue" in binding:
            value = binding["runtimeValue"].get("constant")
            if want and want != "STRING" and not _kfp_type_ok(value, want):
                problems.append(f"{where}.inputs.parameters.{pname}: {value!r} is not a {want}")
        else:
            src = binding.get("taskOutputParameter") or binding.get("taskFinalStatus")
            prod = (src or {}).get("producerTask")
            if src is not None and prod not in tasks:
                problems.append(f"{where}.inputs.parameters.{pname}: producer task {prod!r} does not exist")
            elif "taskOutputParameter" in binding:
                key = src.get("outputParameterKey")
                out = _kfp_outputs(components, tasks[prod], "parameters").get(key)
                if out is None:
                    problems.append(f"{where}.inputs.parameters.{pname}: task {prod!r} has no output parameter {key!r}")
                elif not _kfp_accepts(want, out.get("parameterType")):
                    problems.append(
                        f"{where}.inputs.parameters.{pname}: expects {want}, but {prod}.{key} is {out['parameterType']}"
                    )
    item = (task.get("parameterIterator") or {}).get("itemInput")
    for pname, decl in defs.items():
        if pname not in bound and pname != item and not decl.get("isOptional") and "defaultValue" not in decl:
            problems.append(f"{where}: required input parameter {pname!r} of {ref} is not bound")
    return problems


def _kfp_iterator_and_condition(where: str, task: dict, ref: str, components: dict) -> list[str]:
    """A loop iterates over one of the task's own inputs (or a raw list); a condition reads them."""
    problems = []
    bound = task.get("inputs", {})
    for key, field, kind in (
        ("parameterIterator", "inputParameter", "parameters"),
        ("artifactIterator", "inputArtifact", "artifacts"),
    ):
        items = (task.get(key) or {}).get("items") or {}
        if field in items and items[field] not in bound.get(kind, {}):
            problems.append(f"{where}.{key}.items.{field}: {items[field]!r} is not an input of the task")
        if key in task and not (task[key].get("itemInput")):
            problems.append(f"{where}.{key}: no itemInput")
    condition = (task.get("triggerPolicy") or {}).get("condition") or ""
    for kind, name in _KFP_CONDITION_INPUT.findall(condition):
        if name not in bound.get("parameters" if kind == "parameter_values" else "artifacts", {}):
            problems.append(f"{where}.triggerPolicy.condition: {kind}[{name!r}] is not an input of the task")
    return problems


def _kfp_dag_outputs(owner: str, holder: dict, tasks: dict, components: dict) -> list[str]:
    """A sub-DAG's outputs come from its own tasks' outputs."""
    problems = []
    outputs = holder["dag"].get("outputs") or {}
    selectors = [
        (f"parameters.{name}", sel.get("producerSubtask"), "parameters", sel.get("outputParameterKey"))
        for name, spec in (outputs.get("parameters") or {}).items()
        for sel in [spec.get("valueFromParameter")] + (spec.get("valueFromOneof") or {}).get("parameterSelectors", [])
        if sel
    ]
    selectors += [
        (f"artifacts.{name}", sel.get("producerSubtask"), "artifacts", sel.get("outputArtifactKey"))
        for name, spec in (outputs.get("artifacts") or {}).items()
        for sel in spec.get("artifactSelectors") or []
    ]
    for what, prod, kind, key in selectors:
        if prod not in tasks:
            problems.append(f"{owner}.dag.outputs.{what}: producer subtask {prod!r} does not exist")
        elif key not in _kfp_outputs(components, tasks[prod], kind):
            problems.append(f"{owner}.dag.outputs.{what}: task {prod!r} has no output {kind[:-1]} {key!r}")
    return problems


# =======================================================================================
# Azure Machine Learning

_AML_PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
_AML_PARENT_OUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([^.\s]+)\.outputs\.([^.\s}]+)\s*\}\}$")
_AML_PARENT_IN = re.compile(r"^\$\{\{\s*parent\.inputs\.([^.\s}]+)\s*\}\}$")


def check_azureml(path: Path) -> list[str]:
    import logging

    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    schedule_problems: list[str] = []
    if path.is_dir():
        if (path / "schedule.yml").is_file():
            schedule_problems = _check_azureml_schedule(path / "schedule.yml")
        path = path / "pipeline.yml"
        if not path.is_file():
            return [f"no pipeline.yml in {path.parent}"]
    docs = _load_yaml_docs(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return ["expected one YAML document, a mapping"]
    tree = docs[0]
    if tree.get("type") != "pipeline" or not isinstance(tree.get("jobs"), dict):
        return ["not a pipeline job (type: pipeline with jobs)"]

    problems: list[str] = []
    for key, rule in (("display_name", names.display_name), ("experiment_name", names.azureml_name)):
        if key in tree:
            problems += name_problems(key, tree[key], rule)
    comps, found = _azureml_components(path, tree["jobs"])
    problems += found
    if problems:
        return problems

    from azure.ai.ml import load_job

    try:
        job = load_job(path)
        result = job._validate()
    except Exception as e:  # the SDK raises several exception types for schema errors
        return [f"azure-ai-ml load_job: {type(e).__name__}: {e}"]
    if not result.passed:
        problems += [f"azure-ai-ml: {k}: {v}" for k, v in sorted(result.error_messages.items())]

    problems += _azureml_command_problems(comps)
    problems += _azureml_wiring_problems(tree, comps)
    return schedule_problems + problems


def _azureml_components(path: Path, jobs: dict) -> tuple[dict[str, dict], list[str]]:
    """Each job's component: inline, or a local file next to the pipeline (loaded here, since
    the wiring checks read its inputs and outputs). A registered ``azureml:`` one is refused."""
    problems: list[str] = []
    comps: dict[str, dict] = {}
    for name, node in jobs.items():
        ref = node.get("component") if isinstance(node, dict) else None
        if isinstance(ref, dict):
            comps[name] = ref
        elif isinstance(ref, str) and not ref.startswith("azureml:"):
            file = path.parent / (ref[5:] if ref.startswith("file:") else ref)
            if not file.is_file():
                problems.append(f"jobs.{name}.component: no file {ref!r} next to {path.name}")
                continue
            loaded = _load_yaml_docs(file)
            comps[name] = loaded[0] if loaded and isinstance(loaded[0], dict) else {}
        else:
            problems.append(f"jobs.{name}.component: must be a component file or an inline component, got {ref!r}")
    return comps, problems


def _azureml_command_problems(comps: dict[str, dict]) -> list[str]:
    """A component's code path is portable, and its command's placeholders are declared."""
    problems = []
    for name, comp in comps.items():
        if "code" in comp and Path(str(comp["code"])).is_absolute():
            problems.append(f"jobs.{name}: component code path {comp['code']!r} is absolute (not portable)")
        declared = {"inputs": comp.get("inputs") or {}, "outputs": comp.get("outputs") or {}}
        for io, key in _AML_PLACEHOLDER.findall(str(comp.get("command", ""))):
            if key not in declared[io]:
                problems.append(f"jobs.{name}.component.command: ${{{{{io}.{key}}}}} is not a declared {io[:-1]}")
    return problems


def _azureml_wiring_problems(tree: dict, comps: dict[str, dict]) -> list[str]:
    """Each job's image, input bindings and outputs against its component, and no cycle."""
    problems = []
    edges: dict[str, set[str]] = {}
    for name, node in tree["jobs"].items():
        comp = comps[name]
        decl_in = comp.get("inputs") or {}
        edges[name] = set()
        # A missing compute, environment or required input: azure-ai-ml's own validation above says so.
        env = comp.get("environment")
        if isinstance(env, dict) and "image" in env:
            bad = image_problem(f"jobs.{name}.component.environment.image", env["image"])
            if bad:
                problems.append(bad)
        bindings = node.get("inputs") or {}
        for iname, binding in bindings.items():
            where = f"jobs.{name}.inputs.{iname}"
            decl = decl_in.get(iname)
            if decl is None:
                problems.append(f"{where}: component {comp.get('name')!r} has no input {iname!r}")
                continue
            explicit_type = binding.get("type") if isinstance(binding, dict) else None
            ref = binding.get("path", binding.get("value")) if isinstance(binding, dict) else binding
            if explicit_type and explicit_type != decl.get("type"):
                problems.append(f"{where}: bound as {explicit_type}, but the component declares {decl.get('type')}")
            if isinstance(ref, str) and "${{" in ref:
                problems += _azureml_reference_problems(where, ref, decl, tree, comps, edges[name])
        for oname, obind in (node.get("outputs") or {}).items():
            if oname not in (comp.get("outputs") or {}):
                problems.append(f"jobs.{name}.outputs.{oname}: component has no output {oname!r}")
    cycle = _cycle(edges)
    if cycle:
        problems.append(f"jobs: dependency cycle {' -> '.join(cycle)}")
    return problems


def _azureml_reference_problems(where: str, ref: str, decl: dict, tree: dict, comps: dict, ups: set) -> list[str]:
    """One ``${{parent...}}`` binding: an upstream job's output of the declared type (added to
    ``ups``, the job's edges), or a pipeline input."""
    m_out, m_in = _AML_PARENT_OUT.match(ref), _AML_PARENT_IN.match(ref)
    if m_out:
        up, output = m_out.groups()
        if up not in tree["jobs"]:
            return [f"{where}: {ref} names no job {up!r}"]
        up_out = (comps.get(up, {}).get("outputs") or {}).get(output)
        if up_out is None:
            return [f"{where}: {ref}: job {up!r} has no output {output!r}"]
        ups.add(up)
        if up_out.get("type") != decl.get("type"):
            return [f"{where}: expects {decl.get('type')}, but {up}.{output} is {up_out.get('type')}"]
        return []
    if m_in:
        if m_in.group(1) not in (tree.get("inputs") or {}):
            return [f"{where}: {ref} names no pipeline input {m_in.group(1)!r}"]
        return []
    return [f"{where}: unrecognised reference {ref!r}"]


def _check_azureml_schedule(path: Path) -> list[str]:
    from azure.ai.ml.entities._load_functions import load_schedule

    docs = _load_yaml_docs(path)
    tree = docs[0] if docs and isinstance(docs[0], dict) else {}
    job = tree.get("create_job")
    if isinstance(job, str) and not job.startswith("azureml:"):
        target = path.parent / (job[5:] if job.startswith("file:") else job)
        if not target.is_file():
            return [f"{path.name}: create_job {job!r} is not a file next to it"]
    expr = (tree.get("trigger") or {}).get("expression") if isinstance(tree.get("trigger"), dict) else None
    if expr is not None:
        bad = cron_problems(f"{path.name}: trigger.expression", [expr], "azureml")
        if bad:
            return bad
    try:
        load_schedule(path)
    except Exception as e:
        return [f"{path.name}: azure-ai-ml load_schedule: {type(e).__name__}: {e}"]
    return []


# =======================================================================================
# Argo Workflows: the checks of Argo's controller (workflow/validate/validate.go) that no
# schema makes. As there, arguments a template does not declare are ignored, not errors.

_ARGO_TAG = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
_ARGO_TASK_OUTPUT = re.compile(r"^\{\{\s*tasks\.([^.\s}]+)\.outputs\.(artifacts|parameters)\.([^.\s}]+)\s*\}\}$")
# A `depends` expression names tasks, alone or as task.Result (workflow/common/ancestry.go).
_ARGO_DEPENDS = re.compile(r"([a-zA-Z0-9][-a-zA-Z0-9]*?\.[A-Z][a-zA-Z]+)|([a-zA-Z0-9][-a-zA-Z0-9]*)")
_ARGO_RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed")
_ARGO_TYPES = ("container", "containerSet", "steps", "script", "resource", "dag", "suspend", "data", "http", "plugin")
_ARGO_LOCATIONS = ("s3", "gcs", "http", "git", "raw", "artifactory", "hdfs", "oss", "azure", "plugin")
# Argo's kinds that are no pipeline: `argo lint` skips them, and so does this.
_ARGO_OTHER_KINDS = ("WorkflowEventBinding", "WorkflowTaskSet", "WorkflowTaskResult", "WorkflowArtifactGCTask")
# Argo's limits on object names: 63, and a CronWorkflow's 52 leaves room for its runs' "-<unix time>".
_ARGO_MAX_NAME = {"Workflow": 63, "CronWorkflow": 52, "WorkflowTemplate": 63, "ClusterWorkflowTemplate": 63}


def check_argo(path: Path) -> list[str]:
    """Every document: its kind's schemas, its metadata, then the controller's checks. A
    ``templateRef`` resolves against the (Cluster)WorkflowTemplates of the same file; one
    to a template that is not in the file is the cluster's to resolve."""
    from .argo_schema import KINDS, prune_nulls

    docs = _load_yaml_docs(path)
    if not docs:
        return ["empty file"]
    problems: list[str] = []
    objects = []
    for i, tree in enumerate(docs):
        kind = tree.get("kind") if isinstance(tree, dict) else None
        argo_api = isinstance(tree, dict) and str(tree.get("apiVersion", "")).startswith("argoproj.io/")
        if not isinstance(tree, dict):
            if tree is not None:  # an empty document is no object
                problems.append(f"document {i}: not a mapping")
        elif kind not in KINDS and (kind in _ARGO_OTHER_KINDS or not argo_api):
            continue  # as `argo lint`: another kind's object is not checked
        elif kind not in KINDS:
            problems.append(f"document {i}: kind {kind!r} is not one of Argo's kinds ({', '.join(KINDS)}, ...)")
        else:
            objects.append((i, kind, prune_nulls(tree)))
    if not objects and not problems:
        return [f"no {', '.join(KINDS[:-1])} or {KINDS[-1]} in the file: nothing to check (as `argo lint`)"]
    library = {}
    for _, kind, tree in objects:
        if kind in ("WorkflowTemplate", "ClusterWorkflowTemplate"):
            library[(kind, (tree.get("metadata") or {}).get("name"))] = tree.get("spec") or {}
    for i, kind, tree in objects:
        meta = tree.get("metadata") if isinstance(tree.get("metadata"), dict) else {}
        label = kind if len(docs) == 1 else f"document {i} ({kind} {meta.get('name') or meta.get('generateName')})"
        problems += [f"{label}: {p}" for p in _argo_object_problems(kind, tree, library)]
    return problems


def _argo_object_problems(kind: str, tree: dict, library: dict) -> list[str]:
    from .argo_schema import schema_problems, spec_path

    schema = schema_problems(kind, tree)
    problems = schema + k8s_metadata_problems("metadata", tree.get("metadata"), _ARGO_MAX_NAME[kind])
    spec = tree
    for key in spec_path(kind):
        spec = spec.get(key) if isinstance(spec, dict) else None
    if kind == "CronWorkflow":
        cron_spec = tree.get("spec") if isinstance(tree.get("spec"), dict) else {}
        schedules = cron_spec.get("schedules")
        if schedules == []:  # a missing one the CRD reports
            problems.append("spec.schedules: cron workflow must have at least one schedule")
        if isinstance(schedules, list):
            problems += cron_problems("spec.schedules", schedules, "argo")
    try:
        problems += _ArgoSpec(kind, spec if isinstance(spec, dict) else {}, library).problems()
    except (AttributeError, TypeError, KeyError, IndexError) as e:
        if not schema:  # else the schema problems already say what is malformed
            problems.append(f"cannot check the wiring: {type(e).__name__}: {e}")
    return problems


def _items(value: Any) -> list[dict]:
    return [v for v in value or [] if isinstance(v, dict)]


def _io(template: dict | None, io: str, kind: str) -> list[dict]:
    return _items(((template or {}).get(io) or {}).get(kind))


class _ArgoSpec:
    """One Workflow spec through the controller's checks: names present and unique, every
    template reference resolved, one template type, DAG dependencies defined and acyclic,
    arguments with a value, required inputs supplied, placeholders naming what exists."""

    def __init__(self, kind: str, spec: dict, library: dict):
        self.spec, self.library, self.found = spec, library, []
        self.templates = {t.get("name"): t for t in _items(spec.get("templates"))}
        ref = spec.get("workflowTemplateRef")
        self.ref_spec = self._library_spec(ref) if isinstance(ref, dict) else None
        self.is_template = kind.endswith("WorkflowTemplate")
        # A WorkflowTemplate's workflow parameters may come from the Workflow that uses it, and
        # those of a Workflow that refers to a template not in this file from that template.
        if self.is_template or (isinstance(ref, dict) and self.ref_spec is None):
            self.params = None
        else:
            own = _items((spec.get("arguments") or {}).get("parameters"))
            inherited = _items(((self.ref_spec or {}).get("arguments") or {}).get("parameters"))
            self.params = {p.get("name") for p in own + inherited}
            self.params |= {"json"} if self.params else set()  # {{workflow.parameters.json}}: all of them

    def _library_spec(self, ref: dict) -> dict | None:
        kind = "ClusterWorkflowTemplate" if ref.get("clusterScope") else "WorkflowTemplate"
        return self.library.get((kind, ref.get("name")))

    def problems(self) -> list[str]:
        spec = self.spec
        ref = spec.get("workflowTemplateRef")
        if ref is not None:
            if spec.get("templates"):
                self.found.append(
                    "spec.templates: Templates is invalid field in spec if workflow referred WorkflowTemplate reference"
                )
            if isinstance(ref, dict) and spec.get("entrypoint"):  # the referred template's, when in this file
                self._holder("spec.entrypoint", {"templateRef": {**ref, "template": spec["entrypoint"]}})
        else:
            self._names("spec.templates", _items(spec.get("templates")))
            entry = spec.get("entrypoint")
            if not entry and not self.is_template:
                self.found.append("spec.entrypoint is required")
            elif entry:
                self._holder("spec.entrypoint", {"template": entry})
            if spec.get("onExit"):
                self._holder("spec.onExit", {"template": spec["onExit"]})
        self._hooks("spec", spec)
        for name, template in self.templates.items():
            self._template(f"templates.{name}", template)
        return self.found

    def _names(self, where: str, items: list[dict]) -> None:
        seen = set()
        for i, item in enumerate(items):
            name = item.get("name")
            if not name:
                self.found.append(f"{where}[{i}].name is required")
            elif name in seen:
                self.found.append(f"{where}[{i}].name {name!r} is not unique")
            seen.add(name)

    def _holder(self, where: str, holder: dict) -> dict | None:
        """The template a task, step, hook or entrypoint runs; None where it cannot be known here."""
        name, ref, inline = holder.get("template"), holder.get("templateRef"), holder.get("inline")
        if isinstance(ref, dict):
            if name:
                self.found.append(f"{where}: template name cannot be specified with templateRef")
            elif not ref.get("name") or not ref.get("template"):
                self.found.append(
                    f"{where}.templateRef: {'resource' if not ref.get('name') else 'template'} name is required"
                )
            elif "{{" not in str(ref) and self._library_spec(ref) is not None:
                found = {t.get("name"): t for t in _items(self._library_spec(ref).get("templates"))}.get(
                    ref["template"]
                )
                if found is None:
                    self.found.append(f"{where}: template reference {ref['name']}.{ref['template']} not found")
                return found
            return None
        if name and "{{" not in str(name) and name not in self.templates:  # Argo looks the name up first
            self.found.append(f"{where}: template name {name!r} undefined")
        if isinstance(inline, dict):
            return inline
        if not name:
            self.found.append(f"{where}: names no template (template, templateRef or inline): failed to get a template")
        return self.templates.get(name)

    def _hooks(self, where: str, holder: dict) -> None:
        for event, hook in (holder.get("hooks") or {}).items():
            if isinstance(hook, dict):
                self._holder(f"{where}.hooks.{event}", hook)
        if isinstance(holder.get("onExit"), str) and where != "spec":
            self._holder(f"{where}.onExit", {"template": holder["onExit"]})

    def _template(self, where: str, template: dict) -> None:
        if not any(template.get(t) is not None for t in _ARGO_TYPES):
            self.found.append(f"{where}: template type unspecified. choose one of: {', '.join(_ARGO_TYPES)}")
        for io in ("inputs", "outputs"):
            for kind in ("parameters", "artifacts"):
                self._names(f"{where}.{io}.{kind}", _io(template, io, kind))
        if isinstance(template.get("dag"), dict):
            self._dag(where, template)
        if isinstance(template.get("steps"), list):
            self._steps(where, template)
        for body in ("container", "script"):
            if isinstance(template.get(body), dict):
                self._leaf(f"{where}.{body}", template, template[body])

    def _leaf(self, where: str, template: dict, body: dict) -> None:
        text = " ".join(map(str, (body.get("command") or []) + (body.get("args") or [])))
        text += (
            " " + str(body.get("source", "")) + " " + " ".join(str(e.get("value", "")) for e in _items(body.get("env")))
        )
        self._tags(where, template, text)
        image = body.get("image")
        defaults = ((self.spec.get("templateDefaults") or {}).get(where.rsplit(".", 1)[-1]) or {}).get("image")
        if not image and not defaults:
            self.found.append(f"{where}.image may not be empty")
        elif image:
            bad = image_problem(f"{where}.image", image)
            if bad:
                self.found.append(bad)

    def _tags(self, where: str, template: dict, text: str) -> None:
        """``{{inputs.*}}`` must name a declared input, ``{{workflow.parameters.*}}`` a workflow parameter."""
        declared = {
            kind: {i.get("name") for i in _io(template, "inputs", kind)} for kind in ("parameters", "artifacts")
        }
        for expr in _ARGO_TAG.findall(text):
            parts = expr.split(".")
            if len(parts) < 3:
                continue
            if parts[0] == "inputs" and parts[1] in declared and parts[2] not in declared[parts[1]]:
                self.found.append(f"{where}: failed to resolve {{{{{expr}}}}}: no such input {parts[1][:-1]}")
            elif parts[:2] == ["workflow", "parameters"] and self.params is not None and parts[2] not in self.params:
                self.found.append(f"{where}: failed to resolve {{{{{expr}}}}}: names no workflow parameter")

    def _dag(self, where: str, template: dict) -> None:
        tasks = _items(template["dag"].get("tasks"))
        if not tasks:
            self.found.append(f"{where} must have at least one task")
            return
        self._names(f"{where}.dag.tasks", tasks)
        named = {t["name"]: t for t in tasks if t.get("name")}
        if any(t.get("depends") for t in tasks) and any(t.get("dependencies") and not t.get("depends") for t in tasks):
            self.found.append(f"{where} cannot use both 'depends' and 'dependencies' in the same DAG template")
        edges, targets = {}, {}
        for name, task in named.items():
            tw = f"{where}.dag.tasks.{name}"
            edges[name] = self._task_deps(tw, task, named)
            targets[name] = self._holder(tw, task)
            self._hooks(tw, task)
            if isinstance(task.get("inline"), dict):
                self._template(f"{tw}.inline", task["inline"])
        cycle = _cycle(edges)
        if cycle:
            self.found.append(f"{where}.dag: dependency cycle {' -> '.join(cycle)}")
            return
        for name, task in named.items():
            tw = f"{where}.dag.tasks.{name}"
            self._arguments(tw, template, task, targets[name])
            self._task_outputs(tw, task, _ancestors(name, edges), targets)
        for target in str(template["dag"].get("target") or "").split():
            if "{{" not in target and target not in named:
                self.found.append(f"{where}.targets: target {target!r} is not defined")

    def _task_deps(self, where: str, task: dict, named: dict) -> set[str]:
        """The tasks ``task`` depends on, as Argo reads ``depends`` or ``dependencies``."""
        deps: set[str] = set()
        if task.get("depends"):
            for with_result, alone in _ARGO_DEPENDS.findall(str(task["depends"])):
                name, _, result = (with_result or alone).partition(".")
                deps.add(name)
                if result and result not in _ARGO_RESULTS:
                    self.found.append(f"{where}.depends: task result {result!r} for task {name!r} is invalid")
                loops = name in named and any(named[name].get(k) for k in ("withItems", "withParam", "withSequence"))
                if result in ("AnySucceeded", "AllFailed") and name in named and not loops:
                    self.found.append(
                        f"{where}.depends: dependency {name!r} uses an items-based condition such as "
                        ".AnySucceeded or .AllFailed but does not contain any items"
                    )
        elif isinstance(task.get("dependencies"), list):
            deps = {str(d) for d in task["dependencies"]}
        for missing in sorted(deps - set(named)):
            self.found.append(f"{where}: dependency {missing!r} not defined")
        return deps & set(named)

    def _steps(self, where: str, template: dict) -> None:
        seen: set = set()
        for i, group in enumerate(template["steps"]):
            for step in _items(group if isinstance(group, list) else []):
                sw = f"{where}.steps[{i}].{step.get('name')}"
                if not step.get("name"):
                    self.found.append(f"{where}.steps[{i}].name is required")
                elif step["name"] in seen:
                    self.found.append(f"{where}.steps[{i}].name {step['name']!r} is not unique")
                seen.add(step.get("name"))
                target = self._holder(sw, step)
                self._hooks(sw, step)
                if isinstance(step.get("inline"), dict):
                    self._template(f"{sw}.inline", step["inline"])
                self._arguments(sw, template, step, target)

    def _arguments(self, where: str, owner: dict, task: dict, target: dict | None) -> None:
        """A task's or step's arguments (validateArguments, then ProcessArgs on its template):
        each has a value, and every input of the template without a default is supplied."""
        args = task.get("arguments") or {}
        params, arts = _items(args.get("parameters")), _items(args.get("artifacts"))
        self._names(f"{where}.arguments.parameters", params)
        self._names(f"{where}.arguments.artifacts", arts)
        for p in params:
            if "value" not in p and "valueFrom" not in p:
                self.found.append(f"{where}.arguments.parameters.{p.get('name')}.value or .valueFrom is required")
            self._tags(f"{where}.arguments.parameters.{p.get('name')}", owner, str(p.get("value", "")))
        for a in arts:
            if not (a.get("from") or a.get("fromExpression") or any(k in a for k in _ARGO_LOCATIONS)):
                self.found.append(
                    f"{where}.arguments.artifacts.{a.get('name')}.from, artifact location, or key is required"
                )
        if target is None:
            return
        given = {"parameters": {p.get("name") for p in params}, "artifacts": {a.get("name") for a in arts}}
        for p in _io(target, "inputs", "parameters"):
            if p.get("name") not in given["parameters"] and not any(k in p for k in ("value", "default", "valueFrom")):
                self.found.append(f"{where}: inputs.parameters.{p.get('name')} was not supplied")
        for a in _io(target, "inputs", "artifacts"):
            has_source = a.get("optional") or a.get("from") or any(k in a for k in _ARGO_LOCATIONS)
            if a.get("name") not in given["artifacts"] and not has_source:
                self.found.append(f"{where}: inputs.artifacts.{a.get('name')} was not supplied")

    def _task_outputs(self, where: str, task: dict, ancestors: set[str], targets: dict) -> None:
        """``{{tasks.X.outputs.artifacts.Y}}`` in an argument: X is an ancestor, and its template has output Y."""
        args = task.get("arguments") or {}
        refs = [("parameter", p.get("name"), p.get("value")) for p in _items(args.get("parameters"))]
        refs += [("artifact", a.get("name"), a.get("from")) for a in _items(args.get("artifacts"))]
        for what, name, ref in refs:
            m = _ARGO_TASK_OUTPUT.match(str(ref or ""))
            if not m:
                continue
            up, kind, output = m.groups()
            if up not in ancestors:
                self.found.append(f"{where}: missing dependency {up!r} for {what} {name!r}")
            elif targets.get(up) is not None and output not in {
                o.get("name") for o in _io(targets[up], "outputs", kind)
            }:
                have = f"task {up!r} has no output {kind[:-1]} {output!r}"
                self.found.append(f"{where}.arguments.{what}s.{name}: failed to resolve {ref}: {have}")


def _ancestors(name: str, edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(edges.get(name, ()))
    while todo:
        up = todo.pop()
        if up not in seen:
            seen.add(up)
            todo += edges.get(up, ())
    return seen
