"""What a model is made from, as every seal records it: the parameters of each stage of its
chain, the dataset's hash, the base model and its revision, and the code version."""

from __future__ import annotations

import subprocess

from core.hashing import ROOT, code_hash, digest

# Config keys that are not part of what a model is made from.
NOT_LINEAGE = frozenset({"data.promoted_dataset_hash"})


def config_hash(stage_params: dict[str, dict]) -> str:
    """``{stage: {key: value}}`` -> one hash; the same on every engine for the same config."""
    return digest(
        {stage: {k: v for k, v in params.items() if k not in NOT_LINEAGE} for stage, params in stage_params.items()}
    )


def code_version(stages) -> dict:
    """``git describe`` where there is a checkout (not in the images), and always the content
    hash of the code every stage runs (the one the cache keys use)."""
    out = {"code_hash": digest({s: code_hash(chain_stage(s)) for s in sorted(stages)})}
    try:
        proc = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if proc.returncode == 0 and proc.stdout.strip():
            out["git"] = proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def lineage(stage_params: dict[str, dict], dataset_hash: str | None) -> dict:
    model_params = next((p for p in stage_params.values() if "model.base" in p), {})
    return {
        "dataset_hash": dataset_hash,
        "base_model": model_params.get("model.base"),
        "base_revision": model_params.get("model.revision"),
        "config_hash": config_hash(stage_params),
        "code_version": code_version(stage_params),
    }


def lineage_from_seals(
    own_stage: str, own_params: dict, input_seals: dict[str, dict], tasks: dict[str, str] | None = None
) -> tuple[dict, dict]:
    """From inside a stage: the lineage params of every upstream stage (each seal carries its
    chain's) plus this one, and the lineage. ``tasks``: the task of each per-task input of a
    gathering stage; that input's chain is kept under ``stage[task]``, so that the tasks' trains
    do not overwrite each other."""
    chain: dict[str, dict] = {}
    for name, seal in input_seals.items():
        task = (tasks or {}).get(name)
        for key, params in (seal.get("lineage_params") or {}).items():
            chain[f"{key}[{task}]" if task and "[" not in key else key] = params
    chain[own_stage] = own_params
    dataset = next((s["content_hash"] for s in input_seals.values() if s.get("type") == "Dataset"), None)
    return chain, lineage(chain, dataset)


def chain_stage(key: str) -> str:
    """The stage of a chain key (``train`` or, a task's, ``train[tone]``)."""
    return key.split("[", 1)[0]
