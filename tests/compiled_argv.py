"""The command line each task of a compiled pipeline runs, read back from the compiled files
with every placeholder resolved as the engine would resolve it against a root folder; so a
test can compare it with the local runner's argv. Test-only: no target needs it at run time.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from core.config import encode
from engines import azureml, kfp


def without_nulls(argv: list[str]) -> list[str]:
    """A compiled task passes every declared parameter, ``--key null`` included; the local runner
    leaves those out (``StageSpec.argv``). The stage reads both the same way: its default."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and argv[i + 1] == "null":
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


# KFP


def kfp_argvs(path: str | Path, root: str) -> dict[str, list[str]]:
    """``{stage: argv}`` from a compiled KFP YAML, placeholders resolved against ``root``.

    Artifact paths resolve through the YAML's own wiring (producer task and output key) to
    ``<root>/<producer stage>/<output>``; parameters resolve to the task's constant, or the
    pipeline parameter's default, or the component's default, rendered as the launcher would.
    The metrics wrapper, if any, is stripped: what remains is what the stage itself runs.
    """
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    spec = docs[0]
    root_params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    stage_of: dict[str, str] = {}  # task key -> stage, over the root DAG and the condition's sub-DAG

    def collect(tasks: dict) -> None:
        for name, t in tasks.items():
            comp = spec["components"][t["componentRef"]["name"]]
            if "dag" in comp:
                collect(comp["dag"]["tasks"])
            else:
                stage_of[name] = t["taskInfo"]["name"]

    collect(spec["root"]["dag"]["tasks"])
    out: dict[str, list[str]] = {}

    def artifact_path(binding: dict, scope_artifacts: dict) -> str:
        if "taskOutputArtifact" in binding:
            src = binding["taskOutputArtifact"]
            return f"{root}/{stage_of[src['producerTask']]}/{src['outputArtifactKey']}"
        return scope_artifacts[binding["componentInputArtifact"]]

    def param_value(binding: dict | None, pdef: dict, scope_params: dict) -> Any:
        if binding is None:
            return pdef.get("defaultValue")
        if "runtimeValue" in binding:
            return binding["runtimeValue"]["constant"]
        if "componentInputParameter" in binding:
            return scope_params.get(binding["componentInputParameter"])
        return None  # another task's output parameter: known only at run time

    def walk(tasks: dict, scope_params: dict, scope_artifacts: dict) -> None:
        for task_name, task in tasks.items():
            comp = spec["components"][task["componentRef"]["name"]]
            bindings = task.get("inputs", {})
            if "dag" in comp:  # a dsl.If group: its inputs become the scope of its tasks
                defs = comp.get("inputDefinitions", {}).get("parameters", {})
                walk(
                    comp["dag"]["tasks"],
                    {
                        n: param_value(b, defs.get(n, {}), scope_params)
                        for n, b in bindings.get("parameters", {}).items()
                    },
                    {n: artifact_path(b, scope_artifacts) for n, b in bindings.get("artifacts", {}).items()},
                )
                continue
            container = spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]
            argv = list(container.get("command", [])) + list(container.get("args", []))
            stage = stage_of[task_name]
            defs = comp.get("inputDefinitions", {}).get("parameters", {})
            values = {
                pname: _kfp_render(
                    param_value(bindings.get("parameters", {}).get(pname), pdef, scope_params),
                    pdef["parameterType"],
                    encode,
                )
                for pname, pdef in defs.items()
            }
            paths: dict[str, str] = {}
            for aname, binding in bindings.get("artifacts", {}).items():
                paths[f"inputs.artifacts['{aname}']"] = artifact_path(binding, scope_artifacts)
            for aname in comp.get("outputDefinitions", {}).get("artifacts", {}):
                paths[f"outputs.artifacts['{aname}']"] = f"{root}/{stage}/{aname}"

            def sub(m, values=values, paths=paths, task_name=task_name, stage=stage):
                expr = m.group(1)
                pm = re.fullmatch(r"\$\.inputs\.parameters\['([^']+)'\]", expr)
                if pm:
                    return values[pm.group(1)]
                am = re.fullmatch(r"\$\.((?:inputs|outputs)\.artifacts\['[^']+'\])\.path", expr)
                if am:
                    return paths[am.group(1)]
                if expr == "$.outputs.output_file":
                    return f"{root}/{stage}/executor_output.json"
                raise KeyError(f"unresolved placeholder {{{{{expr}}}}} in task {task_name}")

            if argv[-2:] == [kfp.EXECUTOR_INPUT_FLAG, "{{$}}"]:  # KFP's own plumbing, not the stage's argv
                argv = argv[:-2]
            out[stage] = without_nulls([re.sub(r"\{\{(\$[^}]*)\}\}", sub, a) for a in argv])

    walk(spec["root"]["dag"]["tasks"], {n: d.get("defaultValue") for n, d in root_params.items()}, {})
    return out


def _kfp_render(value: Any, parameter_type: str, encode) -> str:
    if parameter_type == "STRING":
        return value
    if parameter_type == "NUMBER_INTEGER":
        return str(int(value))
    if parameter_type == "NUMBER_DOUBLE":
        return encode(float(value))
    if parameter_type == "BOOLEAN":
        return "true" if value else "false"
    return encode(value)


# AzureML

_PLACEHOLDER = re.compile(r"\$\{\{(inputs|outputs)\.([A-Za-z0-9_]+)\}\}")
_PARENT_OUTPUT = re.compile(r"^\$\{\{parent\.jobs\.([^.]+)\.outputs\.([^.}]+)\}\}$")
_PARENT_INPUT = re.compile(r"^\$\{\{parent\.inputs\.([^.}]+)\}\}$")


def load_component_tree(pipeline_path: Path, ref) -> dict:
    if isinstance(ref, dict):
        return ref
    ref = str(ref)
    if ref.startswith("file:"):
        ref = ref[5:]
    return yaml.safe_load((pipeline_path.parent / ref).read_text())


def azureml_argvs(path: str | Path, root: str) -> dict[str, list[str]]:
    """``{stage: argv}`` from a compiled pipeline.yml, placeholders resolved against ``root``."""
    path = Path(path)
    if path.is_dir():
        path = path / "pipeline.yml"
    tree = yaml.safe_load(path.read_text())
    parent_inputs = tree.get("inputs", {})
    out: dict[str, list[str]] = {}
    for name, node in tree["jobs"].items():
        comp = load_component_tree(path, node["component"])
        bindings = node.get("inputs", {})

        def value_of(inp: str) -> str:
            decl = comp["inputs"][inp]
            binding = bindings.get(inp)
            if isinstance(binding, dict):
                binding = binding.get("path", binding.get("value"))
            if binding is None:
                value = decl.get("default")
            elif isinstance(binding, str) and _PARENT_OUTPUT.match(binding):
                up, output = _PARENT_OUTPUT.match(binding).groups()
                return f"{root}/{up}/{output}"
            elif isinstance(binding, str) and _PARENT_INPUT.match(binding):
                pv = parent_inputs[_PARENT_INPUT.match(binding).group(1)]
                value = pv.get("value", pv.get("default")) if isinstance(pv, dict) else pv
            else:
                value = binding
            return _azureml_render(value, decl["type"])

        def sub(m):
            kind, key = m.groups()
            return value_of(key) if kind == "inputs" else f"{root}/{name}/{key}"

        tokens = shlex.split(comp["command"])
        if tokens[:3] == ["cd", azureml.WORKDIR, "&&"]:
            tokens = tokens[3:]
        if tokens[-2:-1] == ["--model-uri"]:  # AzureML's own plumbing for the model asset, not the stage's argv
            tokens = tokens[:-2]
        out[name] = without_nulls([_PLACEHOLDER.sub(sub, tok) for tok in tokens])
    return out


def _azureml_render(value: Any, azure_type: str) -> str:
    if azure_type == "integer":
        return str(int(value))
    if azure_type == "number":
        return encode(float(value))
    if azure_type == "boolean":
        return "true" if (value is True or str(value).lower() == "true") else "false"
    return str(value)


# Argo

_TAG = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")


def argo_argvs(path: str | Path, root: str) -> dict[str, list[str]]:
    """``{stage: argv}`` from a compiled Workflow, placeholders resolved against ``root``.

    Input artifacts resolve through the task's ``from:`` (producer task and output name) to
    ``<root>/<producer stage>/<output>``; outputs to ``<root>/<stage>/<output>``; parameters to
    the task's argument, with ``{{workflow.parameters.x}}`` taken from the workflow arguments.
    """
    tree = yaml.safe_load(Path(path).read_text())
    spec = tree["spec"]
    wf_params = {p["name"]: p.get("value") for p in spec.get("arguments", {}).get("parameters", [])}
    templates = {t["name"]: t for t in spec["templates"]}
    dag_tasks = templates[spec["entrypoint"]]["dag"]["tasks"]
    stage_of = {t["name"]: templates[t["template"]]["container"]["command"][2].split(".", 1)[1] for t in dag_tasks}
    out: dict[str, list[str]] = {}
    for task in dag_tasks:
        tmpl = templates[task["template"]]
        stage = stage_of[task["name"]]
        args = task.get("arguments", {})
        params = {
            p["name"]: _TAG.sub(lambda m: wf_params[m.group(1).split(".", 2)[2]], str(p["value"]))
            for p in args.get("parameters", [])
        }
        arts = {}
        for a in args.get("artifacts", []):
            m = re.fullmatch(r"\{\{tasks\.([^.]+)\.outputs\.artifacts\.([^}]+)\}\}", a["from"])
            arts[a["name"]] = f"{root}/{stage_of[m.group(1)]}/{m.group(2)}"

        def sub(m):
            parts = m.group(1).split(".")
            if parts[:2] == ["inputs", "parameters"]:
                return params[parts[2]]
            if parts[:2] == ["inputs", "artifacts"] and parts[3] == "path":
                return arts[parts[2]]
            if parts[:2] == ["outputs", "artifacts"] and parts[3] == "path":
                return f"{root}/{stage}/{parts[2]}"
            raise KeyError(f"unresolved placeholder {m.group(0)} in task {task['name']}")

        container = tmpl["container"]
        out[stage] = without_nulls([_TAG.sub(sub, a) for a in container.get("command", []) + container.get("args", [])])
    return out


TASK_ARGVS = {"kfp": kfp_argvs, "azureml": azureml_argvs, "argo": argo_argvs}
