"""Kubernetes CRD schemas as the API server applies them, for jsonschema."""

from __future__ import annotations

from typing import Any


def strict(node: Any, path: tuple = ()) -> None:
    """In place: every object schema accepts only its listed keys (``kubectl --validate=strict``), except
    ``x-kubernetes-preserve-unknown-fields`` subtrees and ``metadata`` (the API server's ObjectMeta).
    A required key with a default may be left out (the API server fills it in). Int-or-string fields
    already carry ``anyOf: [integer, string]`` beside ``x-kubernetes-int-or-string``."""
    if isinstance(node, list):
        for item in node:
            strict(item, path)
        return
    if not isinstance(node, dict):
        return
    props = node.get("properties")
    if node.get("type") == "object" and "additionalProperties" not in node:
        if not node.get("x-kubernetes-preserve-unknown-fields") and path != ("metadata",):
            node["additionalProperties"] = False
    if isinstance(props, dict):
        if "required" in node:
            node["required"] = [r for r in node["required"] if "default" not in props.get(r, {})]
        for key, sub in props.items():
            strict(sub, path + (key,))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            strict(node[key], path + ("*",))
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            strict(node[key], path)
