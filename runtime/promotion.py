"""Promotion: a model that passed the quality gate, recorded with its metrics and lineage.

Lineage is the same on every engine: the dataset's content hash, the base model and its
revision, a hash of the configuration every stage ran with (``data.promoted_dataset_hash``
left out: it decides whether to train, not what is trained) and the code version.

- Local runners: ``RUN_DIR/promoted.json``, written atomically after a run whose every stage
  passed; ``pipeline.py runs`` lists it.
- Argo: the same record as the output artifact ``promoted`` of the promoting task (the stage
  writes it to ``$SLM_PROMOTION_FILE`` after its gate passed), beside the run's other outputs
  in the artifact repository.
- KFP: the evaluate task's ``metrics`` artifact metadata (``promoted``, the lineage and the
  model's URI), from the seals the stage was handed (:func:`lineage_from_seals`); and a model
  version in the Kubeflow Model Registry when ``targets.kfp.model_registry`` is set.
- AzureML: a model asset pointing at the pipeline's INT4 output.

The registries are ``runtime/registries.py``; :func:`publish` runs whichever the
task's environment names, from inside the stage once its gate passed.

A failed gate fails the evaluate stage, so nothing is promoted then.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("slm")

PROMOTED = "promoted.json"
# Where a promoting stage also writes its record (Argo: an output artifact of the task).
PROMOTION_FILE_ENV = "SLM_PROMOTION_FILE"


def promotes(spec) -> bool:
    """A stage that scores an ONNX model into metrics: when it returns, its gate passed."""
    return model_port(spec) is not None and any(p.type == "Metrics" for p in spec.outputs)


def model_port(spec) -> str | None:
    """The input a promoting stage promotes: its ONNX model (a multi-task job's: the one base, not
    the tasks' merged builds it gathers for comparison)."""
    return next((p.name for p in spec.inputs if p.type == "OnnxModel" and p.gathers is None), None)


def adapters(model_path: Path, metrics: dict, chain: dict | None = None, datasets: dict | None = None) -> dict:
    """A multi-task job's promoted adapters (``adapters/<task>.onnx_adapter`` beside its base), each
    with its task's metrics and lineage (its stages' parameters, ``stage[task]`` in the chain, and its
    dataset's hash); none for a single-task model."""
    from core.lineage import lineage
    from core.tasks import SERVE_ADAPTERS

    out = {}
    for f in sorted((Path(model_path) / SERVE_ADAPTERS).glob("*.onnx_adapter")):
        task = f.stem
        own = {k: v for k, v in (chain or {}).items() if k.endswith(f"[{task}]")}
        out[task] = {
            "path": str(f),
            "bytes": f.stat().st_size,
            "metrics": metrics.get(task, {}),
            **({"lineage": lineage(own, (datasets or {}).get(task))} if own else {}),
        }
    return out


def write(path: Path, record: dict) -> None:
    """Atomically: readers see the old file or the new one, never half of one."""
    path = Path(path)
    part = path.with_name(f".{path.name}.part")
    part.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(part, path)


def record(
    model_path: Path,
    model_seal: dict,
    metrics: dict,
    lin: dict,
    run_dir: Path | None,
    config_name: str | None,
    chain: dict | None = None,
    datasets: dict | None = None,
) -> dict:
    """The promotion record; ``chain`` and ``datasets`` (a multi-task job's ``{task: dataset hash}``)
    give each adapter its lineage."""
    return {
        "promoted": True,
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"config": config_name} if config_name else {}),
        **({"run_dir": str(run_dir)} if run_dir else {}),
        "model": {
            "path": str(model_path),
            "type": model_seal.get("type"),
            "content_hash": model_seal.get("content_hash"),
        },
        "metrics": metrics,
        "lineage": lin,
        **({"adapters": found} if (found := adapters(model_path, metrics, chain, datasets)) else {}),
    }


def read(run_dir: Path) -> dict | None:
    from core.errors import UserError
    from core.io import load_file

    path = Path(run_dir) / PROMOTED
    if not path.exists():
        return None
    try:
        record = load_file(path)  # bounded, regular files only: a FIFO never blocks `runs`
    except UserError:
        return None
    return record if isinstance(record, dict) else None


def publish(
    stage: str,
    model_path: Path,
    model_seal: dict,
    metrics_dir: Path,
    lin: dict,
    model_uri: str | None,
    environ=None,
    chain: dict | None = None,
    datasets: dict | None = None,
) -> None:
    """From inside a promoting stage whose gate passed: the record where the engine collects it
    (Argo) and the model in every registry the task's environment names."""
    from runtime import registries

    env = os.environ if environ is None else environ
    if not (
        env.get(PROMOTION_FILE_ENV) or env.get(registries.AZUREML_MODEL_ENV) or env.get(registries.REGISTRY_URL_ENV)
    ):
        return
    metrics_file = Path(metrics_dir) / "metrics.json"
    summary = json.loads(metrics_file.read_text()).get("summary", {}) if metrics_file.is_file() else {}
    rec = {**record(model_path, model_seal, summary, lin, None, None, chain, datasets), "stage": stage}
    if model_uri:
        rec["model"]["uri"] = model_uri
    if env.get(PROMOTION_FILE_ENV):
        target = Path(env[PROMOTION_FILE_ENV])
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target, rec)
        log.info("promoted: %s", target)
    for line in registries.register(rec, model_uri, env):
        log.info("registered: %s", line)
