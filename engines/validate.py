"""Strict offline checks of a compiled pipeline file, references included.

    python pipeline.py validate [--target kfp|azureml|argo] PATH

Each engine's own schema is the first check (KFP: the ``PipelineSpec`` and
``PlatformSpec`` protos; AzureML: ``load_job`` + ``_validate()``; Argo: its CRD schema, CEL
rules included, and its JSON schema, both with unknown keys rejected: ``argo_schema.py``).
None of them resolves references, so every validator then checks the wiring itself: each
task's component/template exists, each upstream reference names an existing task and one
of its outputs of the same type, each required input is bound, each placeholder in a
command names a declared input or output, and the graph has no cycle. What no schema
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
    """The engine whose ``Target.recognizes`` the file (a folder: its pipeline.yml). A file that is
    not YAML, or whose first document no engine recognizes, is "not a pipeline file"."""
    from .base import registry

    why = ""
    if path.is_dir():
        first = {"_folder": True}
    else:
        try:
            docs = _load_yaml_docs(path)
        except YamlSyntaxError as e:
            docs, why = [], f"; this is not YAML ({str(e).split(': not valid YAML: ', 1)[-1]})"
        first = docs[0] if docs and isinstance(docs[0], dict) else {}
    for name, target in registry().items():
        if target.recognizes(first, path):
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
# The name rules are the config's (core/names.py): what compile refuses, validate refuses.
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
    # A generateName gets 5 random characters appended; the API server checks it with its trailing '-' masked.
    if prefix is not None:
        masked = prefix[:-1] + "a" if isinstance(prefix, str) and prefix.endswith("-") else prefix
        if not isinstance(prefix, str) or not _DNS1123_SUBDOMAIN.match(masked) or len(prefix) + 5 > max_name:
            problems.append(f"{where}.generateName: {prefix!r} is not a DNS-1123 name prefix (a-z, 0-9, '-', '.')")
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
    problems: list[str] = []
    for extra in docs[1:]:
        try:
            json_format.ParseDict(extra, pipeline_spec_pb2.PlatformSpec())
        except json_format.ParseError as e:
            problems.append(f"PlatformSpec: {e}")
    sidecar = path.with_name(path.stem + ".recurring-run.json")
    if sidecar.is_file():  # compile's recurring run, beside the pipeline
        body = load_file(sidecar)
        expr = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron") if isinstance(body, dict) else None
        problems += cron_problems(f"{sidecar.name}: trigger.cron_schedule.cron", [expr], "kfp")
    spec = docs[0]
    problems += name_problems("pipelineInfo.name", (spec.get("pipelineInfo") or {}).get("name"), names.kfp_pipeline)
    components = spec.get("components", {})
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    if "root" not in spec or "dag" not in spec["root"]:
        return problems + ["root: no dag"]

    # Components -> executors, and the placeholders each executor's command uses.
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
    for label, ex in executors.items():
        container = ex.get("container")
        if container is None:
            continue
        bad = image_problem(f"deploymentSpec.executors.{label}.container.image", container.get("image"))
        if bad:
            problems.append(bad)
        for field in ("resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit", "resourceMemoryRequest"):
            value = (container.get("resources") or {}).get(field)
            if value is not None:
                bad = quantity_problem(f"deploymentSpec.executors.{label}.container.resources.{field}", value)
                if bad:
                    problems.append(bad)
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

    # Every DAG (root and any sub-DAG component): tasks, their wiring and bindings.
    dags = [("root", spec["root"])] + [(n, c) for n, c in components.items() if "dag" in c]
    for owner, holder in dags:
        problems += _check_kfp_dag(owner, holder, components)

    for i, extra in enumerate(docs[1:], 1):
        k8s = (extra.get("platforms") or {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        for label, conf in k8s.items():
            if label not in executors:
                problems.append(f"platform spec: executor {label!r} is not in deploymentSpec.executors")
            for j, sec in enumerate(conf.get("secretAsEnv", [])):
                name = sec.get("secretName") or sec.get("secretNameParameter", {}).get("runtimeValue", {}).get(
                    "constant"
                )
                if not name or not sec.get("keyToEnv"):
                    problems.append(f"platform spec: {label}.secretAsEnv[{j}]: needs a secret name and keyToEnv")
    return problems


def _check_kfp_dag(owner: str, holder: dict, components: dict) -> list[str]:
    problems: list[str] = []
    tasks = holder["dag"].get("tasks", {})
    own_inputs = holder.get("inputDefinitions", {})
    edges: dict[str, set[str]] = {}
    for tname, task in tasks.items():
        where = f"{owner}.dag.tasks.{tname}"
        ref = task.get("componentRef", {}).get("name")
        comp = components.get(ref)
        if comp is None:
            problems.append(f"{where}.componentRef: no component {ref!r}")
            continue
        deps = set(task.get("dependentTasks", []))
        for d in sorted(deps - set(tasks)):
            problems.append(f"{where}.dependentTasks: no task {d!r}")
        edges[tname] = deps & set(tasks)
        defs = comp.get("inputDefinitions", {})
        bound_art = task.get("inputs", {}).get("artifacts", {})
        bound_par = task.get("inputs", {}).get("parameters", {})
        for aname, binding in bound_art.items():
            decl = defs.get("artifacts", {}).get(aname)
            if decl is None:
                problems.append(f"{where}.inputs.artifacts.{aname}: {ref} has no such input")
                continue
            want = decl.get("artifactType", {}).get("schemaTitle")
            if "taskOutputArtifact" in binding:
                src = binding["taskOutputArtifact"]
                prod, key = src.get("producerTask"), src.get("outputArtifactKey")
                if prod not in tasks:
                    problems.append(f"{where}.inputs.artifacts.{aname}: producer task {prod!r} does not exist")
                    continue
                prod_comp = components.get(tasks[prod].get("componentRef", {}).get("name"), {})
                out = prod_comp.get("outputDefinitions", {}).get("artifacts", {}).get(key)
                if out is None:
                    problems.append(f"{where}.inputs.artifacts.{aname}: task {prod!r} has no output artifact {key!r}")
                    continue
                got = out.get("artifactType", {}).get("schemaTitle")
                if want and got != want:
                    problems.append(f"{where}.inputs.artifacts.{aname}: expects {want}, but {prod}.{key} is {got}")
                if prod not in deps:
                    problems.append(f"{where}: consumes {prod}.{key} but does not list {prod!r} in dependentTasks")
                edges[tname].add(prod)
            elif "componentInputArtifact" in binding:
                name = binding["componentInputArtifact"]
                if name not in own_inputs.get("artifacts", {}):
                    problems.append(f"{where}.inputs.artifacts.{aname}: {owner} has no input artifact {name!r}")
            else:
                problems.append(f"{where}.inputs.artifacts.{aname}: bound to nothing")
        for pname, binding in bound_par.items():
            decl = defs.get("parameters", {}).get(pname)
            if decl is None:
                problems.append(f"{where}.inputs.parameters.{pname}: {ref} has no such input")
                continue
            if "componentInputParameter" in binding:
                name = binding["componentInputParameter"]
                up = own_inputs.get("parameters", {}).get(name)
                if up is None:
                    problems.append(f"{where}.inputs.parameters.{pname}: {owner} has no input parameter {name!r}")
                elif up.get("parameterType") != decl.get("parameterType"):
                    problems.append(
                        f"{where}.inputs.parameters.{pname}: expects {decl.get('parameterType')}, "
                        f"but {owner}'s {name} is {up.get('parameterType')}"
                    )
            elif "runtimeValue" in binding:
                value = binding["runtimeValue"].get("constant")
                if not _kfp_type_ok(value, decl.get("parameterType")):
                    problems.append(
                        f"{where}.inputs.parameters.{pname}: {value!r} is not a {decl.get('parameterType')}"
                    )
            elif "taskOutputParameter" in binding:
                prod = binding["taskOutputParameter"].get("producerTask")
                if prod not in tasks:
                    problems.append(f"{where}.inputs.parameters.{pname}: producer task {prod!r} does not exist")
        for aname, decl in defs.get("artifacts", {}).items():
            if aname not in bound_art and not decl.get("isOptional"):
                problems.append(f"{where}: required input artifact {aname!r} of {ref} is not bound")
        for pname, decl in defs.get("parameters", {}).items():
            if pname not in bound_par and not decl.get("isOptional") and "defaultValue" not in decl:
                problems.append(f"{where}: required input parameter {pname!r} of {ref} is not bound")
    cycle = _cycle(edges)
    if cycle:
        problems.append(f"{owner}.dag: dependency cycle {' -> '.join(cycle)}")
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
    comps: dict[str, dict] = {}
    for name, node in tree["jobs"].items():
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

    for name, comp in comps.items():
        if "code" in comp and Path(str(comp["code"])).is_absolute():
            problems.append(f"jobs.{name}: component code path {comp['code']!r} is absolute (not portable)")
        declared = {"inputs": comp.get("inputs") or {}, "outputs": comp.get("outputs") or {}}
        for io, key in _AML_PLACEHOLDER.findall(str(comp.get("command", ""))):
            if key not in declared[io]:
                problems.append(f"jobs.{name}.component.command: ${{{{{io}.{key}}}}} is not a declared {io[:-1]}")

    parent_inputs = tree.get("inputs") or {}
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
            if not isinstance(ref, str) or "${{" not in ref:
                continue
            m_out, m_in = _AML_PARENT_OUT.match(ref), _AML_PARENT_IN.match(ref)
            if m_out:
                up, output = m_out.groups()
                if up not in tree["jobs"]:
                    problems.append(f"{where}: {ref} names no job {up!r}")
                    continue
                up_out = (comps.get(up, {}).get("outputs") or {}).get(output)
                if up_out is None:
                    problems.append(f"{where}: {ref}: job {up!r} has no output {output!r}")
                    continue
                if up_out.get("type") != decl.get("type"):
                    problems.append(f"{where}: expects {decl.get('type')}, but {up}.{output} is {up_out.get('type')}")
                edges[name].add(up)
            elif m_in:
                if m_in.group(1) not in parent_inputs:
                    problems.append(f"{where}: {ref} names no pipeline input {m_in.group(1)!r}")
            else:
                problems.append(f"{where}: unrecognised reference {ref!r}")
        for oname, obind in (node.get("outputs") or {}).items():
            if oname not in (comp.get("outputs") or {}):
                problems.append(f"jobs.{name}.outputs.{oname}: component has no output {oname!r}")
    cycle = _cycle(edges)
    if cycle:
        problems.append(f"jobs: dependency cycle {' -> '.join(cycle)}")
    return schedule_problems + problems


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
# Argo Workflows

_ARGO_TAG = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
_ARGO_FROM = re.compile(r"^\{\{\s*tasks\.([^.\s]+)\.outputs\.artifacts\.([^.\s}]+)\s*\}\}$")


# Argo's own limits on object names (workflow/validate/validate.go): a Workflow's name is a
# label value (63); a CronWorkflow's leaves room for the "-<unix time>" of the runs it starts.
_ARGO_MAX_NAME = {"Workflow": 63, "CronWorkflow": 52}


def check_argo(path: Path) -> list[str]:
    from .argo_schema import KINDS, schema_problems

    docs = _load_yaml_docs(path)
    problems: list[str] = []
    if not docs:
        return ["empty file"]
    for i, tree in enumerate(docs):
        if not isinstance(tree, dict):
            problems.append(f"document {i}: not a mapping")
            continue
        kind = tree.get("kind")
        if kind not in KINDS:
            problems.append(f"document {i}: kind {kind!r} is not one of {', '.join(KINDS)}")
            continue
        schema = [f"{kind}: {p}" for p in schema_problems(kind, tree)]
        problems += schema + k8s_metadata_problems(f"{kind}: metadata", tree.get("metadata"), _ARGO_MAX_NAME[kind])
        spec = tree.get("spec") if isinstance(tree.get("spec"), dict) else {}
        if kind == "CronWorkflow":
            if not (tree.get("metadata") or {}).get("name"):
                problems.append(f"{kind}: metadata.name is required (a CronWorkflow cannot use generateName)")
            schedules = spec.get("schedules") or ([spec["schedule"]] if spec.get("schedule") else [])
            problems += cron_problems(f"{kind}: spec.schedules", schedules, "argo")
            spec = spec.get("workflowSpec") if isinstance(spec.get("workflowSpec"), dict) else {}
        try:
            problems += _check_argo_spec(kind, spec)
        except (AttributeError, TypeError, KeyError, IndexError) as e:
            if not schema:  # else the schema problems already say what is malformed
                problems.append(f"{kind}: cannot check the wiring: {type(e).__name__}: {e}")
    return problems


def _check_argo_spec(kind: str, spec: dict) -> list[str]:
    problems: list[str] = []
    templates = {t.get("name"): t for t in spec.get("templates") or []}
    wf_params = {p.get("name") for p in (spec.get("arguments") or {}).get("parameters") or []}
    if spec.get("entrypoint") not in templates:
        problems.append(f"{kind}: entrypoint {spec.get('entrypoint')!r} is not a template")
    for tname, tmpl in templates.items():
        # Placeholders in container templates must name declared inputs/outputs.
        container = tmpl.get("container")
        if container:
            inputs = tmpl.get("inputs") or {}
            outputs = tmpl.get("outputs") or {}
            declared = {
                ("inputs", "parameters"): {p.get("name") for p in inputs.get("parameters") or []},
                ("inputs", "artifacts"): {a.get("name") for a in inputs.get("artifacts") or []},
                ("outputs", "artifacts"): {a.get("name") for a in outputs.get("artifacts") or []},
                ("outputs", "parameters"): {p.get("name") for p in outputs.get("parameters") or []},
            }
            text = " ".join(map(str, (container.get("command") or []) + (container.get("args") or [])))
            for env in container.get("env") or []:
                text += " " + str(env.get("value", ""))
            for expr in _ARGO_TAG.findall(text):
                parts = expr.split(".")
                if (
                    len(parts) >= 3
                    and (parts[0], parts[1]) in declared
                    and parts[2] not in declared[(parts[0], parts[1])]
                ):
                    problems.append(f"templates.{tname}: {{{{{expr}}}}} names an undeclared {parts[0]} {parts[1][:-1]}")
                elif parts[0] == "workflow" and parts[1:2] == ["parameters"] and parts[2] not in wf_params:
                    problems.append(f"templates.{tname}: {{{{{expr}}}}} names no workflow parameter")
            bad = image_problem(f"templates.{tname}.container.image", container.get("image"))
            if bad:
                problems.append(bad)
        dag = tmpl.get("dag")
        if not dag:
            continue
        tasks = {t.get("name"): t for t in dag.get("tasks") or []}
        edges: dict[str, set[str]] = {}
        for name, task in tasks.items():
            where = f"templates.{tname}.dag.tasks.{name}"
            ref = task.get("template")
            target = templates.get(ref)
            if target is None:
                problems.append(f"{where}.template: no template {ref!r}")
                continue
            deps = set(task.get("dependencies") or []) if isinstance(task.get("dependencies"), list) else set()
            for dep in re.findall(r"[A-Za-z0-9][-A-Za-z0-9_]*", str(task.get("depends") or "")):
                if dep.lower() not in (
                    "succeeded",
                    "failed",
                    "errored",
                    "skipped",
                    "omitted",
                    "daemoned",
                    "anysucceeded",
                    "allfailed",
                ):
                    deps.add(dep)
            for d in sorted(deps - set(tasks)):
                problems.append(f"{where}.dependencies: no task {d!r}")
            edges[name] = deps & set(tasks)
            args = task.get("arguments") or {}
            t_inputs = target.get("inputs") or {}
            in_arts = {a.get("name"): a for a in t_inputs.get("artifacts") or []}
            in_pars = {p.get("name"): p for p in t_inputs.get("parameters") or []}
            given_arts = {a.get("name"): a for a in args.get("artifacts") or []}
            given_pars = {p.get("name"): p for p in args.get("parameters") or []}
            for aname, art in given_arts.items():
                if aname not in in_arts:
                    problems.append(f"{where}.arguments.artifacts.{aname}: template {ref!r} has no such input")
                src = art.get("from")
                if src is None:
                    continue
                m = _ARGO_FROM.match(str(src))
                if not m:
                    problems.append(f"{where}.arguments.artifacts.{aname}: unrecognised from {src!r}")
                    continue
                up, output = m.groups()
                if up not in tasks:
                    problems.append(f"{where}.arguments.artifacts.{aname}: from names no task {up!r}")
                    continue
                up_tmpl = templates.get(tasks[up].get("template"), {})
                if output not in {a.get("name") for a in (up_tmpl.get("outputs") or {}).get("artifacts") or []}:
                    problems.append(
                        f"{where}.arguments.artifacts.{aname}: task {up!r} has no output artifact {output!r}"
                    )
                if up not in deps:
                    problems.append(f"{where}: uses {up}'s output but does not depend on {up!r}")
                edges[name].add(up)
            for aname, decl in in_arts.items():
                if aname not in given_arts and not decl.get("optional") and not _argo_has_source(decl):
                    problems.append(f"{where}: input artifact {aname!r} of template {ref!r} is not given")
            for pname, par in given_pars.items():
                if pname not in in_pars:
                    problems.append(f"{where}.arguments.parameters.{pname}: template {ref!r} has no such input")
                for expr in _ARGO_TAG.findall(str(par.get("value", ""))):
                    parts = expr.split(".")
                    if parts[:2] == ["workflow", "parameters"] and parts[2] not in wf_params:
                        problems.append(
                            f"{where}.arguments.parameters.{pname}: {{{{{expr}}}}} names no workflow parameter"
                        )
            for pname, decl in in_pars.items():
                if (
                    pname not in given_pars
                    and "value" not in decl
                    and "default" not in decl
                    and "valueFrom" not in decl
                ):
                    problems.append(f"{where}: input parameter {pname!r} of template {ref!r} is not given")
        cycle = _cycle(edges)
        if cycle:
            problems.append(f"templates.{tname}.dag: dependency cycle {' -> '.join(cycle)}")
    return problems


def _argo_has_source(decl: dict) -> bool:
    return any(k in decl for k in ("s3", "gcs", "http", "git", "raw", "artifactory", "hdfs", "oss", "azure", "from"))
