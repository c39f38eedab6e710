"""Tell Kubeflow Pipelines what a stage produced, in KFP's own terms: the executor output.

KFP's launcher (and ``kfp.local``) take a container task's outputs only from the executor
output file that the executor input (the ``{{$}}`` placeholder) names: a task that writes
none "has no outputs", and the next task cannot find its inputs. So when the KFP adapter
passes ``--kfp-executor-input {{$}}``, the harness calls :func:`write` after sealing the
outputs. It registers

- every output artifact with its URI and the seal's metadata (stage, cache key, content hash,
  size), so the KFP UI and lineage show what made it;
- for a ``Metrics`` output, the scalar summary of its ``metrics.json`` (the UI's metrics tab);
- for the ``<metrics>_confusion`` ``ClassificationMetrics`` output, the confusion matrix of the
  shipped (ONNX) model, with ``(unparsed)`` as its own class so that the matrix stays square;
- for the ``<metrics>_report`` ``HTML`` output, a copy of the Metrics output's ``report.html``
  (evaluate's self-contained report), which the KFP UI renders;
- the stage's output parameters (``StageSpec.out_params``) as ``parameterValues``: what a
  ``dsl.If`` downstream tests (data_prep's ``changed``);
- on the metrics of a stage that passed its quality gate: ``promoted`` and the model's lineage
  (dataset hash, base model and revision, config hash, code version) and URI
  (``runtime/promotion.py``).

Nothing here imports KFP: the stage images do not carry it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from core.io import flat
from core.scoring import NONE

CONFUSION_SUFFIX = "_confusion"
REPORT_SUFFIX = "_report"  # an ``Output[HTML]``: the Metrics output's report.html, for the KFP UI
# Where KFP's launcher mounts remote artifact stores inside the container.
_URI_PREFIXES = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


def local_path(uri: str) -> Path:
    for prefix, mount in _URI_PREFIXES.items():
        if uri.startswith(prefix):
            return Path(mount + uri[len(prefix) :])
    return Path(uri)


def flatten_scalars(tree: dict, prefix: str = "") -> dict[str, float]:
    """``{"pytorch": {"accuracy": 0.9}}`` -> ``{"pytorch_accuracy": 0.9}``: what the UI can plot."""
    leaves = flat(tree, prefix, sep="_")
    return {k: float(v) for k, v in leaves.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def confusion_matrix(metrics: dict) -> dict | None:
    """KFP's ``ClassificationMetrics`` metadata from our ``metrics.json``, or None.

    Our matrix has one row per true label and one column per predicted label plus
    ``(unparsed)``; KFP's is square, so ``(unparsed)`` also gets a (zero) row.
    """
    models = [k for k, v in metrics.items() if isinstance(v, dict) and isinstance(v.get("confusion_matrix"), dict)]
    if not models:
        return None
    model = next((m for m in models if m.startswith("onnx")), models[-1])
    cm = metrics[model]["confusion_matrix"]
    columns, rows, counts = list(cm["columns"]), list(cm["rows"]), cm["counts"]
    by_label = dict(zip(rows, counts))
    square = [[int(x) for x in by_label.get(label, [0] * len(columns))] for label in columns]
    return {
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": str(label)} for label in columns],
            "rows": [{"row": row} for row in square],
        },
        "model": model,
        "unparsed_label": NONE,
    }


def _seal_metadata(marker: dict) -> dict:
    files = marker.get("files", {})
    return {
        "stage": marker.get("stage"),
        "cache_key": marker.get("cache_key"),
        "content_hash": marker.get("content_hash"),
        "files": len(files),
        "seconds": marker.get("seconds"),
    }


def input_uri(executor_input: dict, port: str) -> str | None:
    """The URI KFP gives an input artifact (``minio://``, ``s3://``, ``gs://``...)."""
    listed = executor_input.get("inputs", {}).get("artifacts", {}).get(port, {}).get("artifacts") or [{}]
    return listed[0].get("uri")


def promotion_metadata(executor_input: dict, promoted: dict) -> dict:
    """``promoted`` and the lineage, flat (what the KFP UI shows), with the promoted model's URI."""
    lin = promoted["lineage"]
    meta = {
        "promoted": True,
        "model_uri": input_uri(executor_input, promoted["model_input"]) or "",
        "model_content_hash": promoted["model_seal"].get("content_hash"),
        **{k: v for k, v in lin.items() if k != "code_version" and v is not None},
    }
    meta.update({f"code_{k}": v for k, v in lin["code_version"].items()})
    return meta


def write(
    executor_input: dict,
    markers: dict[str, dict],
    metrics_ports: list[str],
    outputs: dict[str, Path],
    parameters: dict[str, str] | None = None,
    promoted: dict | None = None,
) -> dict:
    """Write the executor output file for the sealed ``outputs`` and the stage's output
    ``parameters`` (``parameterValues``, what ``dsl.If`` tests); return what was written.
    ``promoted`` (a stage that passed its gate): the metrics artifacts also carry
    :func:`promotion_metadata`."""
    declared = executor_input.get("outputs", {}).get("artifacts", {})
    artifacts: dict = {}
    for name, entry in declared.items():
        listed = entry.get("artifacts") or [{}]
        uri = listed[0].get("uri", "")
        if name in markers:
            metadata = _seal_metadata(markers[name])
            if name in metrics_ports:
                metadata.update(flatten_scalars(_metrics_json(outputs[name]).get("summary", {})))
                if promoted:
                    metadata.update(promotion_metadata(executor_input, promoted))
        elif name.endswith(REPORT_SUFFIX) and name[: -len(REPORT_SUFFIX)] in metrics_ports:
            page = Path(outputs[name[: -len(REPORT_SUFFIX)]]) / "report.html"
            if not page.is_file():
                continue
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(page, path)
            metadata = {"display_name": "report.html", "size": page.stat().st_size}
        elif name.endswith(CONFUSION_SUFFIX) and name[: -len(CONFUSION_SUFFIX)] in metrics_ports:
            metadata = confusion_matrix(_metrics_json(outputs[name[: -len(CONFUSION_SUFFIX)]]))
            if metadata is None:
                continue
            path = local_path(uri)  # the artifact's own file: the matrix, for download
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metadata, indent=2))
        else:
            continue
        artifacts[name] = {"artifacts": [{"name": name, "uri": uri, "metadata": metadata}]}
    result: dict = {"artifacts": artifacts}
    declared_params = executor_input.get("outputs", {}).get("parameters", {})
    values = {k: v for k, v in (parameters or {}).items() if k in declared_params}
    if values:
        result["parameterValues"] = values
    output_file = Path(executor_input["outputs"]["outputFile"])
    output_file.parent.mkdir(parents=True, exist_ok=True)
    part = output_file.with_name(output_file.name + ".part")
    part.write_text(json.dumps(result))
    os.replace(part, output_file)
    return result


def _metrics_json(folder: Path) -> dict:
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}
