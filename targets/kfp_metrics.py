"""Run a stage, then publish its metrics to the KFP UI (the KFP executor output file).

    python -c "<this file>" --executor-output PATH \
        --metrics NAME DIR CONFUSION_NAME CONFUSION_PATH [--metrics ...] -- python -m components.<stage> ...

(``python -m targets.kfp_metrics`` works the same from the repository.) The KFP adapter puts
this file's source into the command, so the stage images need not contain ``targets/``.

The stage writes ``<DIR>/metrics.json`` (``{"summary": {...}, "labels": [...],
"<model>": {"confusion_matrix": [[...]]}}``). After the stage succeeds, this writes the
executor output that the KFP launcher merges into the output artifacts' metadata:
the flattened ``summary`` scalars on the ``Metrics`` artifact (``pytorch_accuracy``,
``onnx_int4_macro_f1``, ``agreement`` ...) and a confusion matrix on the
``ClassificationMetrics`` artifact. The stage's exit code is passed through unchanged.

Runs in the stage image; needs only the standard library, and must stay self-contained.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# The model whose confusion matrix the KFP UI shows: the shipped one if present.
PREFERRED_MODELS = ("onnx_int4",)


def flatten_scalars(tree: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_scalars(value, name + "_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def confusion_matrix(metrics: dict) -> dict | None:
    labels = metrics.get("labels")
    models = [k for k, v in metrics.items() if isinstance(v, dict) and "confusion_matrix" in v]
    if not labels or not models:
        return None
    model = next((m for m in PREFERRED_MODELS if m in models), models[-1])
    rows = metrics[model]["confusion_matrix"]
    return {
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": str(label)} for label in labels],
            "rows": [{"row": [int(x) for x in row]} for row in rows],
        },
        "model": model,
    }


def executor_output(pairs: list[tuple[str, Path, str]]) -> dict:
    artifacts: dict = {}
    for metrics_name, metrics_dir, cm_name in pairs:
        path = Path(metrics_dir) / "metrics.json"
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        artifacts[metrics_name] = {"artifacts": [{"metadata": flatten_scalars(metrics.get("summary", {}))}]}
        cm = confusion_matrix(metrics)
        if cm:
            artifacts[cm_name] = {"artifacts": [{"metadata": cm}]}
    return {"artifacts": artifacts}


def parse(argv: list[str]):
    if "--" not in argv:
        raise SystemExit("usage: kfp_metrics --executor-output PATH [--metrics ...] -- STAGE ARGV")
    split = argv.index("--")
    own, stage = argv[:split], argv[split + 1 :]
    executor_path = None
    pairs = []
    cm_paths = {}
    i = 0
    while i < len(own):
        if own[i] == "--executor-output":
            executor_path = own[i + 1]
            i += 2
        elif own[i] == "--metrics":
            name, directory, cm_name, cm_path = own[i + 1 : i + 5]
            pairs.append((name, Path(directory), cm_name))
            cm_paths[cm_name] = cm_path
            i += 5
        else:
            raise SystemExit(f"targets.kfp_metrics: unknown argument {own[i]!r}")
    return executor_path, pairs, cm_paths, stage


def main(argv: list[str] | None = None) -> int:
    executor_path, pairs, cm_paths, stage = parse(sys.argv[1:] if argv is None else argv)
    if stage[:1] == ["python"]:
        stage = [sys.executable, *stage[1:]]
    code = subprocess.call(stage)
    if code != 0:
        return code
    out = executor_output(pairs)
    for cm_name, cm_path in cm_paths.items():
        if cm_name in out["artifacts"]:  # the artifact file itself: the matrix, for download
            Path(cm_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cm_path).write_text(json.dumps(out["artifacts"][cm_name]["artifacts"][0]["metadata"], indent=2))
    if executor_path:
        Path(executor_path).parent.mkdir(parents=True, exist_ok=True)
        Path(executor_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
