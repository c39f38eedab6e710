"""`pipeline.py validate` agrees with the engines on their own public example suites
(tests/data/engine-suites/, README there): Argo's examples/, KFP's SDK test pipelines
(compiled IR: loops, conditions, exit handlers, pipelines in pipelines) and Argo Workflows that
KFP's backend compiled. Every valid file is accepted; the suites' invalid files, and valid ones
broken here the way a hand edit breaks them, are refused with the engine's reason.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.errors import UserError
from engines import argo_schema
from engines.validate import validate_file

SUITES = Path(__file__).resolve().parent / "data" / "engine-suites"
TARGET = {"argo-examples": "argo", "kfp-argo": "argo", "kfp-sdk": "kfp"}
VALID = sorted(p for p in SUITES.glob("*/valid/*.yaml"))

# Each upstream invalid file, and the reason the engine refuses it.
INVALID = {
    "argo-examples/examples__fun-with-gifs.yaml": "needs metadata.name or metadata.generateName",  # inside labels
    "argo-examples/examples__k8s-jobs.yaml": "needs metadata.name or metadata.generateName",  # inside an annotation
    "argo-examples/examples__k8s-patch-json-workflow.yaml": "key 'annotations' appears twice",
    "argo-examples/e2e__lintfail__disallow-unknown.yaml": "container: unknown key 'someExtraField'",
    "argo-examples/e2e__lintfail__invalid-spec.yaml": "spec.entrypoint: template name 'doesnotexist' undefined",
    "argo-examples/e2e__lintfail__malformed-spec.yaml": "spec.entrypoint: ['thisshouldnotbeanarray'] is not of type",
    "argo-examples/e2e__testdata__malformed__malformed-clusterworkflowtemplate.yaml": (
        "spec.arguments.parameters: {'someParam': 'Hello, world!'} is not of type 'array'"
    ),
    "argo-examples/e2e__testdata__malformed__malformed-cronworkflow.yaml": "'schedules' is a required property",
    "argo-examples/e2e__testdata__malformed__malformed-workflow.yaml": "is not of type 'array'",
    "argo-examples/e2e__testdata__malformed__malformed-workflowtemplate-2.yaml": "spec.templates[0].name is required",
    "argo-examples/e2e__testdata__malformed__malformed-workflowtemplate.yaml": "is not of type 'array'",
    "argo-examples/e2e__testdata__workflow-templates__invalid-workflowtemplate.yaml": "unknown key 'entrypoints'",
    "argo-examples/e2e__testdata__workflow-template-invalid-entrypoint.yaml": "'mountPath' is a required property",
    "argo-examples/e2e__cron__cron-and-malformed-template.yaml": "(WorkflowTemplate basic-malformed): spec: unknown",
    "argo-examples/e2e__expectedfailures__empty-parameter-dag.yaml": "inputs.parameters.message was not supplied",
    "argo-examples/e2e__expectedfailures__empty-parameter-steps.yaml": "inputs.parameters.message was not supplied",
    "argo-examples/e2e__expectedfailures__misreference-template-name.yaml": "template name 'hell0' undefined",
    "argo-examples/e2e__expectedfailures__dag-failFast-hang.yaml": "'dag-hang-failFast-' is not a DNS-1123 name prefix",
    # Argo 3's forms, which `argo convert` upgrades; Argo 4's CRD has no such keys.
    "argo-examples/e2e__testdata__convert__convert-legacy-cron.yaml": "spec: unknown key 'schedule'",
    "argo-examples/e2e__testdata__convert__convert-legacy-sync.yaml": "spec.synchronization: unknown key 'mutex'",
    "kfp-sdk/no_name.yaml": "pipelineInfo.name: invalid v2 pipeline spec: name is empty",
    "kfp-sdk/invalid_yaml.yaml": 'has no field named "components_1"',
    "kfp-sdk/empty_file.yaml": "not a pipeline file",
    # KFP's API server refuses it (template_test.go), as its name says.
    "kfp-sdk/apiserver__hello_world_schema_2_0_0.yaml": "KFP only supports schema version 2.1.0",
}


def _id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.name}"


def _refusal(path: Path) -> str:
    with pytest.raises(UserError) as err:
        validate_file(path)
    text = str(err.value)
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("path", VALID, ids=_id)
def test_every_valid_suite_file_is_accepted(path):
    assert validate_file(path) == TARGET[path.parent.parent.name]


def test_suites_hold_what_the_issue_names():
    """The sample covers what was refused: WorkflowTemplates (alone and beside a Workflow), inline
    templates, int-or-string fields written as ints, KFP loops, conditions, exit handlers and
    nested pipelines, and KFP-compiled Workflows passing undeclared arguments."""
    names = {_id(p) for p in VALID}
    counts = {suite: sum(n.startswith(suite + "/") for n in names) for suite in TARGET}
    assert counts["argo-examples"] >= 50 and counts["kfp-sdk"] >= 30 and counts["kfp-argo"] >= 20, counts
    texts = {n: (SUITES / n.split("/")[0] / "valid" / n.split("/")[1]).read_text() for n in names}
    for needle in ("kind: WorkflowTemplate", "kind: ClusterWorkflowTemplate", "inline:", "port: 80", "minAvailable"):
        assert any(needle in t for n, t in texts.items() if n.startswith("argo-examples/")), needle
    for needle in ("parameterIterator", "artifactIterator", "triggerPolicy", "taskFinalStatus", "producerSubtask"):
        assert any(needle in t for n, t in texts.items() if n.startswith("kfp-sdk/")), needle


@pytest.mark.parametrize("name", sorted(INVALID))
def test_upstream_invalid_files_are_refused_with_the_reason(name):
    suite, file = name.split("/")
    assert INVALID[name] in _refusal(SUITES / suite / "invalid" / file)


def test_every_upstream_invalid_file_has_a_reason():
    files = {f"{p.parent.parent.name}/{p.name}" for p in SUITES.glob("*/invalid/*")}
    assert files == set(INVALID)


# ------------------------------------------------------------------------------------------
# Valid suite files, broken here


def _load(name: str) -> list:
    suite, file = name.split("/")
    return list(yaml.safe_load_all((SUITES / suite / "valid" / file).read_text()))


def _templates(doc: dict) -> list[dict]:
    spec = doc["spec"]["workflowSpec"] if doc["kind"] == "CronWorkflow" else doc["spec"]
    return spec["templates"]


def _dag_tasks(doc: dict, template: str) -> dict:
    tmpl = next(t for t in _templates(doc) if t["name"] == template)
    return {t["name"]: t for t in tmpl["dag"]["tasks"]}


def _kfp_tasks(ir: dict, owner: str) -> dict:
    return (ir["root"] if owner == "root" else ir["components"][owner])["dag"]["tasks"]


def _first_template_ref(docs) -> dict:
    steps = [s for d in docs for t in _templates(d) for group in t.get("steps") or [] for s in group]
    return next(s["templateRef"] for s in steps if "templateRef" in s)


def _drop_template_name(docs):
    del _templates(docs[0])[0]["name"]


BROKEN = {
    "argo: template without a name": (
        "argo-examples/dag-diamond.yaml",
        _drop_template_name,
        "spec.templates[0].name is required",
    ),
    "argo: task without a template": (
        "argo-examples/dag-diamond.yaml",
        lambda d: _dag_tasks(d[0], "diamond")["B"].pop("template"),
        "templates.diamond.dag.tasks.B: names no template (template, templateRef or inline): failed to get a template",
    ),
    "argo: input not supplied": (
        "argo-examples/dag-diamond.yaml",
        lambda d: _dag_tasks(d[0], "diamond")["C"].pop("arguments"),
        "templates.diamond.dag.tasks.C: inputs.parameters.message was not supplied",
    ),
    "argo: undefined template": (
        "argo-examples/dag-diamond.yaml",
        lambda d: _dag_tasks(d[0], "diamond")["B"].update(template="nope"),
        "templates.diamond.dag.tasks.B: template name 'nope' undefined",
    ),
    "argo: dependency cycle": (
        "argo-examples/dag-diamond.yaml",
        lambda d: _dag_tasks(d[0], "diamond")["A"].update(depends="D"),
        "templates.diamond.dag: dependency cycle A -> D -> B -> A",
    ),
    "argo: undefined dependency": (
        "argo-examples/dag-enhanced-depends.yaml",
        lambda d: _dag_tasks(d[0], "diamond")["B"].update(depends="A.Succeeded && nope.Failed"),
        "dependency 'nope' not defined",
    ),
    "argo: undefined template in an inline template": (
        "argo-examples/dag-inline-workflow.yaml",
        lambda d: _dag_tasks(d[0], "main")["a"].update(template="nope"),
        "templates.main.dag.tasks.a: template name 'nope' undefined",  # Argo looks a name up before the inline
    ),
    "argo: WorkflowTemplate beside its Workflow, undefined templateRef": (
        "argo-examples/workflow-template__templates.yaml",
        lambda d: _first_template_ref(d).update(template="nope"),
        "(WorkflowTemplate workflow-template-inner-steps): templates.inner-steps.steps[0].inner-hello1: "
        "template reference workflow-template-print-message.nope not found",
    ),
    "argo: Workflow beside its WorkflowTemplate, undefined entrypoint": (
        "argo-examples/workflow-template__templates.yaml",
        lambda d: d.append(
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Workflow",
                "metadata": {"generateName": "ref-"},
                "spec": {"entrypoint": "nope", "workflowTemplateRef": {"name": "workflow-template-submittable"}},
            }
        ),
        "spec.entrypoint: template reference workflow-template-submittable.nope not found",
    ),
    "kfp-argo: undefined template": (
        "kfp-argo/pipeline_with_loops.yaml",
        lambda d: next(t for t in _templates(d[0]) if "dag" in t)["dag"]["tasks"][0].update(template="nope"),
        "template name 'nope' undefined",
    ),
    "kfp: undefined component in a loop": (
        "kfp-sdk/parallel_and_nested__pipeline_with_loops.yaml",
        lambda d: _kfp_tasks(d[0], "comp-for-loop-1")["print-text"]["componentRef"].update(name="comp-nope"),
        "comp-for-loop-1.dag.tasks.print-text.componentRef: no component 'comp-nope'",
    ),
    "kfp: loop over an input the task lacks": (
        "kfp-sdk/parallel_and_nested__pipeline_with_loops.yaml",
        lambda d: _kfp_tasks(d[0], "root")["for-loop-2"]["parameterIterator"]["items"].update(inputParameter="nope"),
        "for-loop-2.parameterIterator.items.inputParameter: 'nope' is not an input of the task",
    ),
    "kfp: condition on an input the task lacks": (
        "kfp-sdk/essential__pipeline_with_condition.yaml",
        lambda d: _kfp_tasks(d[0], "root")["condition-1"]["triggerPolicy"].update(
            condition="inputs.parameter_values['nope'] == 'heads'"
        ),
        "condition-1.triggerPolicy.condition: parameter_values['nope'] is not an input of the task",
    ),
    "kfp: nested pipeline output from no subtask": (
        "kfp-sdk/parallel_and_nested__pipeline_in_pipeline_loaded_from_yaml.yaml",
        lambda d: [
            sel.update(producerSubtask="nope")
            for out in d[0]["components"]["comp-inner-pipeline"]["dag"]["outputs"].values()
            for spec in out.values()
            for sel in spec.get("artifactSelectors", []) + [spec.get("valueFromParameter") or {}]
        ],
        "comp-inner-pipeline.dag.outputs.",
    ),
    "kfp: cycle in a sub-DAG": (
        "kfp-sdk/failing__pipeline_with_exit_handler.yaml",
        lambda d: [
            t.setdefault("dependentTasks", []).extend(sorted(set(_kfp_tasks(d[0], "comp-exit-handler-1")) - {n}))
            for n, t in _kfp_tasks(d[0], "comp-exit-handler-1").items()
        ],
        "comp-exit-handler-1.dag: dependency cycle",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_suite_files_are_refused_with_the_reason(case, tmp_path):
    name, breaks, reason = BROKEN[case]
    docs = _load(name)
    breaks(docs)
    path = tmp_path / Path(name).name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert reason in _refusal(path)


def test_undeclared_arguments_are_ignored_as_argo_ignores_them(tmp_path):
    docs = _load("argo-examples/dag-diamond.yaml")
    for task in _dag_tasks(docs[0], "diamond").values():
        task["arguments"]["parameters"].append({"name": "not-declared", "value": "x"})
        task["arguments"]["artifacts"] = [{"name": "nor-this", "raw": {"data": "x"}}]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    assert validate_file(path) == "argo"


# ------------------------------------------------------------------------------------------
# Any int-or-string field takes both forms, and nothing else


def _int_or_string_paths() -> list[tuple]:
    """Every int-or-string field under a template's container, with the path to it."""
    template = argo_schema._schema_at(argo_schema._crd_schema("Workflow"), ("spec", "templates", 0))
    found = []

    def walk(node, path, depth):
        if depth > 6 or not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string"):
            found.append(path)
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, path + (key,), depth + 1)

    walk(template, (), 0)
    return sorted(p for p in found if not any(part in p for part in ("inline", "withSequence")))


INT_OR_STRING = _int_or_string_paths()
BASE = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "ios-"},
    "spec": {"entrypoint": "main", "templates": [{"name": "main", "container": {"image": "busybox"}}]},
}


def _place(value, path: tuple) -> dict:
    doc = copy.deepcopy(BASE)
    node = doc["spec"]["templates"][0]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return doc


def _problems_at(doc: dict, path: tuple) -> list[str]:
    where = "spec.templates[0](main)." + ".".join(path) + ":"
    return [p for p in argo_schema.schema_problems("Workflow", doc) if p.startswith(where)]


def test_int_or_string_fields_are_found():
    assert len(INT_OR_STRING) > 20
    assert ("container", "readinessProbe", "httpGet", "port") in INT_OR_STRING
    assert ("activeDeadlineSeconds",) in INT_OR_STRING and ("retryStrategy", "limit") in INT_OR_STRING


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(INT_OR_STRING),
    value=st.one_of(st.integers(min_value=0, max_value=65535), st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,14}\Z")),
)
def test_any_int_or_string_field_takes_an_int_or_a_string(path, value):
    """Whatever the JSON schema's string-only typing says: the CRD decides."""
    assert _problems_at(_place(value, path), path) == []


@settings(derandomize=True, max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(INT_OR_STRING),
    value=st.one_of(
        st.floats(allow_nan=False).filter(lambda f: not f.is_integer()), st.lists(st.integers(), max_size=2)
    ),
)
def test_an_int_or_string_field_refuses_other_types(path, value):
    problems = _problems_at(_place(value, path), path)
    assert problems and "must be an integer or a string [Argo CRD" in problems[0], problems


def test_inline_templates_are_checked_as_templates():
    """The CRD leaves ``inline`` open (a schema cannot contain itself); Argo decodes it into a
    Template, so its int-or-string forms pass and unknown keys and CEL rules apply."""
    doc = _load("argo-examples/dag-inline-workflow.yaml")[0]
    inline = _dag_tasks(doc, "main")["a"]["inline"]
    inline.update(activeDeadlineSeconds=10)
    inline["container"]["readinessProbe"] = {"httpGet": {"port": 80}}
    assert argo_schema.schema_problems("Workflow", doc) == []
    inline["container"]["imagePullPolicyy"] = "Always"
    inline["script"] = {"image": "python:3.12", "source": "print(1)"}
    where = "spec.templates[0](main).dag.tasks[0](a).inline"
    assert argo_schema.schema_problems("Workflow", doc) == [
        f"{where}.container: unknown key 'imagePullPolicyy' [Argo CRD + JSON schema]",
        f"{where}: template must have at most one template type [Argo CRD rule]",
    ]


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?"


@settings(derandomize=True, max_examples=40, deadline=None)
@given(prefix=st.from_regex(rf"\A{_DNS_LABEL}(\.{_DNS_LABEL}){{0,4}}-?\Z"))
@example(prefix="a" * 47)
@example(prefix="a" * 47 + "-")
@example(prefix="global-parameter-from-configmap-" * 4)
def test_generate_name_prefixes_kubernetes_accepts_are_accepted(prefix, tmp_path_factory):
    """The API server cuts a generateName to 58 characters before adding 5 random ones, so any
    DNS-1123 prefix makes a valid Workflow name; a CronWorkflow's runs need 11 more, so its
    prefix may have at most 47."""
    doc = copy.deepcopy(BASE)
    doc["metadata"] = {"generateName": prefix}
    path = tmp_path_factory.mktemp("gen") / "w.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert validate_file(path) == "argo"
    cron = {**doc, "kind": "CronWorkflow", "spec": {"schedules": ["0 3 * * *"], "workflowSpec": doc["spec"]}}
    path.write_text(yaml.safe_dump(cron))
    if len(prefix) <= 47:
        assert validate_file(path) == "argo"
    else:
        assert "at most 52 are allowed" in _refusal(path)


def test_other_objects_in_a_file_are_skipped_as_argo_lint_skips_them(tmp_path):
    """A ConfigMap the Workflow reads may come first; a WorkflowEventBinding is no pipeline. A file
    with nothing to check, or an Argo kind that does not exist, is refused."""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "params"}, "data": {"x": "1"}}
    workflow = _load("argo-examples/hello-world.yaml")[0]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump_all([config_map, None, workflow]))
    assert validate_file(path) == "argo"
    binding = {  # examples/workflow-event-binding/event-consumer-workfloweventbinding.yaml
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowEventBinding",
        "metadata": {"name": "event-consumer"},
        "spec": {"event": {"selector": 'payload.appellation != ""'}, "submit": {"workflowTemplateRef": {"name": "x"}}},
    }
    path.write_text(yaml.safe_dump_all([binding]))
    assert "nothing to check (as `argo lint`)" in _refusal(path)
    path.write_text(yaml.safe_dump_all([config_map, {**workflow, "kind": "Workflw"}]))
    assert "document 1: kind 'Workflw' is not one of Argo's kinds" in _refusal(path)
