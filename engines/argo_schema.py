"""Argo objects checked against Argo's own schemas, as strictly as an API server would.

Two official schemas ship, unchanged, in ``engines/schemas/argo-workflows/`` (README there):

- the CRDs' ``openAPIV3Schema`` of the four pipeline kinds (Workflow, CronWorkflow,
  WorkflowTemplate, ClusterWorkflowTemplate): what a Kubernetes API server with Argo
  installed enforces, and the authority here. It types int-or-string fields (ports,
  ``retryStrategy.limit``) as either, has Argo's name patterns (template, task, parameter
  and artifact names), the Kubernetes quantity pattern on resources, and CEL rules
  (``x-kubernetes-validations``: one template type per template, at most one artifact
  location, ``depends`` xor ``dependencies``...), which are evaluated here with the
  ``common-expression-language`` package;
- ``schema.json``: the JSON schema of Argo's API (the ``argo`` CLI and IDEs use it), which
  types int-or-string fields and quantities as strings. It counts only where it is no
  stricter than the CRD: a finding stands where the CRD refuses the same value too, and on
  the top-level ``metadata``, which the API server checks natively and the CRD leaves out.

Both are made strict the way ``kubectl --validate=strict`` / the API server's strict field
validation is: an object schema that lists its properties rejects any other key (the CRD's
``x-kubernetes-preserve-unknown-fields`` subtrees stay open, but for inline templates,
checked as the templates Argo decodes them into), and a CRD object with no properties at all
accepts none (the server would prune them). A required field that has a default is not
required (the server fills it in before validating), and nulls are pruned first, as the
server prunes them.

Parsing a 3 MB CRD YAML takes 1.5-6 s here, so each CRD's ``openAPIV3Schema`` is also
stored as JSON in ``derived/`` with the SHA-256 of its source; a derived file whose hash
does not match is ignored and the YAML parsed instead. Refresh them with
``python -m engines.argo_schema --refresh`` after replacing the upstream files.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from .crd import strict

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / "argo-workflows"
DERIVED_DIR = SCHEMA_DIR / "derived"
CRD_FILES = {
    "Workflow": "argoproj.io_workflows.yaml",
    "CronWorkflow": "argoproj.io_cronworkflows.yaml",
    "WorkflowTemplate": "argoproj.io_workflowtemplates.yaml",
    "ClusterWorkflowTemplate": "argoproj.io_clusterworkflowtemplates.yaml",
}
JSON_SCHEMA_FILE = "schema.json"
JSON_DEFINITION = {k: f"io.argoproj.workflow.v1alpha1.{k}" for k in CRD_FILES}
KINDS = tuple(CRD_FILES)


def spec_path(kind: str) -> tuple[str, ...]:
    """Where ``kind`` keeps its Workflow spec (the templates, entrypoint, arguments...)."""
    return ("spec", "workflowSpec") if kind == "CronWorkflow" else ("spec",)


# Kubernetes' quantity pattern, as the CRD writes it on every resources field.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


_PATTERN_NAMES = {
    QUANTITY_PATTERN: "a Kubernetes quantity (e.g. 500m, 2, 4Gi)",
    "^[a-zA-Z0-9][-a-zA-Z0-9]*$": (
        "a valid Argo template/task name (letters, digits and '-', starting with a letter or digit)"
    ),
    "^[-a-zA-Z0-9_]+$": "a valid Argo parameter name (letters, digits, '-' and '_')",
    "^[-a-zA-Z0-9_{}.]+$": "a valid Argo artifact name (letters, digits, '-' and '_')",
}


# ---------------------------------------------------------------------------------------
# Loading


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _derive(kind: str) -> dict:
    """The ``openAPIV3Schema`` of ``kind``'s CRD, parsed from the upstream YAML (slow)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((SCHEMA_DIR / CRD_FILES[kind]).read_text(encoding="utf-8"), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]


def derived_path(kind: str) -> Path:
    return DERIVED_DIR / (Path(CRD_FILES[kind]).stem + ".openapi.json")


def refresh() -> list[Path]:
    """Rewrite ``derived/`` from the upstream CRDs."""
    DERIVED_DIR.mkdir(exist_ok=True)
    written = []
    for kind, name in CRD_FILES.items():
        doc = {"source": name, "sha256": _sha256(SCHEMA_DIR / name), "openAPIV3Schema": _derive(kind)}
        path = derived_path(kind)
        path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _load_crd_openapi(kind: str) -> dict:
    """``kind``'s CRD ``openAPIV3Schema``, unchanged, a fresh copy: from ``derived/`` when
    current, else the YAML. (Parsing the JSON again is faster than a deep copy.)"""
    path = derived_path(kind)
    if path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("sha256") == _sha256(SCHEMA_DIR / CRD_FILES[kind]):
            return doc["openAPIV3Schema"]
    return _derive(kind)


@lru_cache(maxsize=None)
def crd_openapi(kind: str) -> dict:
    """``kind``'s CRD ``openAPIV3Schema`` as upstream wrote it (shared: do not modify)."""
    return _load_crd_openapi(kind)


def _load_json_schema() -> dict:
    return json.loads((SCHEMA_DIR / JSON_SCHEMA_FILE).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# Strict versions of the schemas


def _strict_json(node: Any) -> None:
    """In place: an object schema that lists its properties accepts no other key."""
    if isinstance(node, list):
        for item in node:
            _strict_json(item)
    elif isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for key, sub in node.items():
            if key == "properties" and isinstance(sub, dict):
                for prop in sub.values():
                    _strict_json(prop)
            else:
                _strict_json(sub)


def _link_inline(schema: dict, kind: str) -> None:
    """In place: a DAG task's or step's ``inline`` template gets the schema of a template.

    The CRD leaves ``inline`` open (``x-kubernetes-preserve-unknown-fields``) only because a
    template cannot contain its own schema; Argo decodes it into the same Go ``Template`` as
    ``spec.templates[]``, so it is checked as one (the schema becomes cyclic, which a
    validator, descending only as deep as the document, does not mind)."""
    template = _schema_at(schema, spec_path(kind) + ("templates", 0))
    holders = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties") or {}
            if isinstance(props.get("inline"), dict) and props["inline"].get("x-kubernetes-preserve-unknown-fields"):
                holders.append(props)
            for sub in props.values():
                walk(sub)
            walk(node.get("items"))

    walk(schema)
    for props in holders:
        props["inline"] = template


def _schema_at(schema: dict, path) -> dict | str | None:
    """The CRD schema node that checks the document node at ``path``; OPEN where the CRD
    keeps unknown fields (anything is accepted there); None where it has no node."""
    node: Any = schema
    for part in path:
        props = node.get("properties") or {}
        if node.get("x-kubernetes-preserve-unknown-fields") and part not in props:
            return OPEN
        if isinstance(part, int):
            node = node.get("items")
        elif part in props:
            node = props[part]
        else:
            node = node.get("additionalProperties")
        if not isinstance(node, dict):
            return None
    return node


OPEN = "open"


@lru_cache(maxsize=None)
def _crd_schema(kind: str) -> dict:
    """``kind``'s CRD schema, strict, with inline templates typed as templates."""
    schema = _load_crd_openapi(kind)
    strict(schema)
    _link_inline(schema, kind)
    return schema


@lru_cache(maxsize=None)
def _crd_validator(kind: str):
    from jsonschema import Draft7Validator

    return Draft7Validator(_crd_schema(kind))


def prune_nulls(doc: Any) -> Any:
    """``doc`` without its null-valued keys: what the API server checks. It prunes a null
    wherever the CRD does not say ``nullable`` (Argo's CRDs never do), and a null in the
    natively typed ``metadata`` decodes to the zero value (KFP's backend writes
    ``status: {startedAt: null}`` and ``creationTimestamp: null``)."""
    if isinstance(doc, dict):
        return {k: prune_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [prune_nulls(v) for v in doc]
    return doc


def _crd_also_refuses(kind: str, path, instance: Any) -> bool:
    """Whether a JSON-schema error at ``path`` stands: the JSON schema counts only where it is
    no stricter than the CRD. The top-level ``metadata`` is the API server's own
    ``ObjectMeta``, which the JSON schema describes and the CRD leaves out."""
    from jsonschema import Draft7Validator

    path = list(path)
    if path[:1] == ["metadata"]:
        return True
    node = _schema_at(_crd_schema(kind), path)
    if not isinstance(node, dict):  # open: the CRD accepts anything; None: the CRD reports the parent
        return False
    return not Draft7Validator(node).is_valid(instance)


@lru_cache(maxsize=None)
def _json_validator(kind: str):
    from jsonschema import Draft202012Validator

    doc = _load_json_schema()
    definitions = doc["definitions"]
    _strict_json(definitions)
    schema = {"$schema": doc["$schema"], "$ref": f"#/definitions/{JSON_DEFINITION[kind]}", "definitions": definitions}
    return Draft202012Validator(schema)


def _import_cel():
    """The ``cel`` package without its command-line interface: ``cel/__init__`` imports
    ``cel.cli`` (prompt_toolkit, rich, typer: 1 s of a 2 s validate) for nothing we use."""
    import types

    if "cel" in sys.modules:
        return sys.modules["cel"]
    sys.modules["cel.cli"] = types.ModuleType("cel.cli")
    try:
        import cel
    finally:
        del sys.modules["cel.cli"]  # a later `import cel.cli` loads the real one
    return cel


@lru_cache(maxsize=None)
def _cel_rules(kind: str) -> list[tuple[tuple, str, str, Any]]:
    """``[(schema path, rule, message, compiled)]``: every ``x-kubernetes-validations`` rule."""
    cel = _import_cel()

    rules = []

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations") or []:
                rules.append((path, rule["rule"], rule.get("message") or rule["rule"], cel.compile(rule["rule"])))
            for key, sub in (node.get("properties") or {}).items():
                walk(sub, path + (key,))
            if isinstance(node.get("items"), dict):
                walk(node["items"], path + ("[]",))
            if isinstance(node.get("additionalProperties"), dict):
                walk(node["additionalProperties"], path + ("{}",))

    walk(crd_openapi(kind), ())
    return rules


# ---------------------------------------------------------------------------------------
# Checking


def _where(doc: Any, path) -> str:
    """``spec.templates[1](train).container``: a readable JSON path, list items named where they have one."""
    out, node = "", doc
    for part in path:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and isinstance(node[part], dict) else None
            out += f"[{part}]" + (f"({name})" if isinstance(name, str) else "")
        else:
            out += f".{part}"
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out.lstrip(".") or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _messages(err, doc: Any) -> list[str]:
    where = _where(doc, err.absolute_path)
    if err.validator == "additionalProperties" and err.validator_value is False:
        known = set((err.schema.get("properties") or {}))
        return [f"{where}: unknown key {k!r}" for k in sorted(set(err.instance) - known)]
    if err.validator == "pattern":
        what = _PATTERN_NAMES.get(err.validator_value)
        if what:
            return [f"{where}: {_short(err.instance)} is not {what}"]
        return [f"{where}: {_short(err.instance)} does not match {err.validator_value}"]
    if err.validator == "anyOf" and err.schema.get("x-kubernetes-int-or-string"):
        return [f"{where}: {_short(err.instance)} must be an integer or a string"]
    if err.validator == "type":
        return [f"{where}: {_short(err.instance)} is not of type {err.validator_value!r}"]
    if err.validator == "required":
        return [f"{where}: {err.message}"]
    return [f"{where}: {_short(err.instance)}: {err.validator} {_short(err.validator_value)} not met"]


def _cel_failures(rules, doc: Any) -> list[tuple[tuple, str]]:
    """``[(document path, why)]``: each CEL rule evaluated on every node of ``doc`` at the
    rule's place in the schema."""

    def nodes(value: Any, path: tuple, real: tuple):
        if not path:
            yield real, value
            return
        head, rest = path[0], path[1:]
        if head == "[]" and isinstance(value, list):
            for i, item in enumerate(value):
                yield from nodes(item, rest, real + (i,))
        elif head == "{}" and isinstance(value, dict):
            for k, item in value.items():
                yield from nodes(item, rest, real + (k,))
        elif isinstance(value, dict) and head in value:
            yield from nodes(value[head], rest, real + (head,))

    failures = []
    for path, rule, message, program in rules:
        for real, value in nodes(doc, path, ()):
            try:
                ok = program.execute({"self": value})
            except Exception as e:  # a rule that cannot run on this value (wrong type): the schema check reports it
                ok = True if not isinstance(value, (dict, list)) else f"{type(e).__name__}: {e}"
            if ok is not True:
                failures.append((real, message if ok is False else f"{message} ({ok})"))
    return failures


def inline_templates(doc: Any, path: tuple = ()):
    """``(path, template)`` of every inline template of a DAG task or step, nested ones too."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "inline" and isinstance(value, dict) and ("tasks" in path[-3:] or "steps" in path[-4:]):
                yield path + (key,), value
            yield from inline_templates(value, path + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from inline_templates(value, path + (i,))


def _cel_problems(kind: str, doc: dict) -> list[str]:
    """Every CEL rule where the CRD puts it, and a template's rules on each inline template
    too (the CRD, which leaves inline templates open, would not run them; Argo's controller
    reads them as templates)."""
    found = [(_where(doc, real), why) for real, why in _cel_failures(_cel_rules(kind), doc)]
    at = spec_path(kind) + ("templates",)
    mine = [r for r in _cel_rules(kind) if r[0][: len(at)] == at]
    for where, template in inline_templates(doc):
        virtual: Any = [template]
        for key in reversed(at):
            virtual = {key: virtual}
        for real, why in _cel_failures(mine, virtual):
            rest = real[len(at) + 1 :]
            found.append((_where(doc, where + rest), why))
    return [f"{where}: {why}" for where, why in found]


def schema_problems(kind: str, doc: dict) -> list[str]:
    """Every violation of Argo's CRD schema (its CEL rules included) and of its JSON schema.

    One line each, ``<where>: <what> [<which schemas>]``; an empty list means both accept it.
    """
    if kind not in CRD_FILES:
        raise ValueError(f"no Argo schema for kind {kind!r}")
    doc = prune_nulls(doc)
    found: dict[str, list[str]] = {}
    crd = _crd_validator(kind)
    for err in sorted(crd.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        for msg in _messages(err, doc):
            found.setdefault(msg, []).append("CRD")
    for msg in _cel_problems(kind, doc):
        found.setdefault(msg, []).append("CRD rule")
    js = _json_validator(kind)
    for err in sorted(js.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        if not _crd_also_refuses(kind, err.absolute_path, err.instance):
            continue
        for msg in _messages(err, doc):
            found.setdefault(msg, []).append("JSON schema")
    return [f"{msg} [Argo {' + '.join(dict.fromkeys(src))}]" for msg, src in found.items()]


def definition_problems(definition: str, doc: Any) -> list[str]:
    """Violations of one definition of Argo's JSON schema (strict), e.g. an artifact repository
    (``io.argoproj.workflow.v1alpha1.ArtifactRepository``) as a ConfigMap holds it."""
    from jsonschema import Draft202012Validator

    schema = dict(_json_validator("Workflow").schema, **{"$ref": f"#/definitions/{definition}"})
    if definition not in schema["definitions"]:
        raise ValueError(f"Argo's JSON schema has no definition {definition!r}")
    errors = sorted(Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [m for err in errors for m in _messages(err, doc)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--refresh"]:
        print("usage: python -m engines.argo_schema --refresh", file=sys.stderr)
        return 2
    for path in refresh():
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
