"""evaluate: score the merged PyTorch model and the ONNX model on the held-out split.

Both models get the same prompts, greedy decoding and label parser
(``core.prompts.parse_label``), so their numbers and their agreement are
comparable. Accuracy runs batched; latency is measured per prompt at batch 1 on a
sample. The quality gate (``evaluate.min_accuracy`` on the ONNX model,
``evaluate.max_int4_drop`` versus PyTorch) fails the stage with the numbers in the message.

Output (Metrics artifact): ``report.html`` (stages/evaluate/report.py: one self-contained
page with the lineage, loss curve, confusion matrices, agreement and the gate's verdict) and
``metrics.json`` with a ``summary`` block
(``{"pytorch": {"accuracy", "macro_f1"}, "onnx_int4": {...}, "agreement": ...}``) and the
full reports: per-class precision/recall, confusion matrices, tokens/s, latency, sizes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from core.artifacts import write_json
from core.errors import QualityGateError, UserError
from core.generators import OnnxGenerator, TorchGenerator, timed, timed_batches
from core.io import read_json, read_jsonl
from core.models import device_for
from core.progress import Progress
from core.prompts import parse_label
from core.runner import StageContext
from core.scoring import classification_report, percentile
from stages.registry import EvaluateParams

log = logging.getLogger("slm")
LATENCY_SAMPLES = 50  # batch-1 prompts per model; fewer when the eval split is smaller (the report says n)
FLAG_CLASS_RECALL_DROP = 0.10  # the report flags a class INT4 recalls this much worse, gate or not


def run(params: EvaluateParams, ctx: StageContext, dataset: Path, model: Path, onnx_model: Path, metrics: Path) -> None:
    ec = params.evaluate
    for old in rejected_paths(ctx):  # an earlier failed gate's: never left to describe this run
        old.unlink(missing_ok=True)
    labels = read_json(dataset / "stats.json", "dataset")["labels"]
    rows = read_jsonl(dataset / "eval.jsonl")[: ec.max_samples]
    prompts, truth = [r["prompt"] for r in rows], [r["label"] for r in rows]
    onnx_key, build_info = _onnx_build_info(onnx_model)
    onnx_gen = OnnxGenerator(onnx_model, ec.max_new_tokens)  # first: fails fast, before the PyTorch load
    torch_gen = TorchGenerator(model, device_for(params.runtime), ec.max_new_tokens)
    report = {"labels": labels, "samples": len(rows), "environment": environment(params.runtime)}
    if build_info.get("search"):  # onnx_build searched the recipe: the report plots its front
        report["int4_search"] = build_info["search"]
    predictions = {}
    for name, gen in (("pytorch", torch_gen), (onnx_key, onnx_gen)):
        report[name], predictions[name] = measure(name, gen, prompts, truth, labels, ec)
    drop = _compare(report, predictions, onnx_key, ec)
    verdict = quality_gate(report, onnx_key, labels, ec, drop)
    report["verdict"] = verdict  # metrics.json (or, failed, metrics.rejected.json) keeps it with the numbers
    write_json(metrics / "metrics.json", report)
    page = write_report(report, onnx_key, rows, predictions, model, ctx, verdict, metrics / "report.html")
    if verdict["failures"]:
        # The Metrics output is not sealed on a failed gate: the numbers and the same page, with its
        # FAILED banner, go beside where it would have been. Only these paths are named.
        rejected, rejected_page = rejected_paths(ctx)
        write_json(rejected, report)
        shutil.copyfile(page, rejected_page)
        log.info("report: %s", rejected_page)
        raise QualityGateError(
            "quality gate failed: " + "; ".join(verdict["failures"]) + f" (full report: {rejected}, {rejected_page})"
        )
    log.info("report: %s", ctx.finals["metrics"] / "report.html")


def _onnx_build_info(onnx_model: Path) -> tuple[str, dict]:
    """The report's key for the ONNX model (``onnx_int4``) and its build_info.json; a CUDA build on an
    onnxruntime without the CUDA provider is a one-line error here, before anything loads."""
    if not (onnx_model / "genai_config.json").is_file():
        raise UserError(f"{onnx_model} has no genai_config.json; it is not an onnxruntime-genai model")
    build_info = read_json(onnx_model / "build_info.json", "onnx model")
    if build_info.get("execution_provider") == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise UserError(
                f"{onnx_model} was built for CUDA but this onnxruntime ({onnxruntime.__version__}) has no "
                "CUDAExecutionProvider: install onnxruntime-gpu (and onnxruntime-genai-cuda) in the evaluate image, "
                "or build with onnx.execution_provider=cpu"
            )
    return f"onnx_{build_info.get('precision', 'int4')}", build_info


def measure(name: str, gen, prompts: list[str], truth: list[str], labels: list[str], ec) -> tuple[dict, list]:
    """One model over the eval rows: its classification report, batched throughput and batch-1
    latency. Returns (the report's entry for it, its parsed label per row)."""
    gen.generate(prompts[: ec.batch_size])  # warm-up (CUDA context, kernels, allocator): not timed
    gen.generated_tokens = 0
    load_before = _loadavg()
    with Progress(f"evaluate {name}", total=len(prompts), unit="rows") as progress:
        texts, speed = timed_batches(gen, prompts, ec.batch_size, progress)
    predicted = [parse_label(t, labels) for t in texts]
    with Progress(
        f"evaluate {name} latency (batch 1)", total=min(LATENCY_SAMPLES, len(prompts)), unit="prompts"
    ) as progress:
        latencies = []
        for p in prompts[:LATENCY_SAMPLES]:
            latencies.append(timed(gen, [p])[1])
            progress.update(1)
    entry = {
        **classification_report(truth, predicted, labels),
        **speed,
        "batch_size": ec.batch_size,
        "latency_samples": len(latencies),
        "load_average": {"before": load_before, "after": _loadavg()},
        "latency_ms_p50": round(percentile(latencies, 0.5) * 1000, 2),
        "latency_ms_p95": round(percentile(latencies, 0.95) * 1000, 2),
        "size_bytes": folder_bytes(gen.path),
        "examples": [
            {"prompt": p[-80:], "generated": t, "label": y} for p, t, y in list(zip(prompts, texts, truth))[:5]
        ],
    }
    log.info(
        "%s: accuracy %.3f, macro-F1 %.3f, %.0f tokens/s",
        name,
        entry["accuracy"],
        entry["macro_f1"],
        speed["tokens_per_second"],
    )
    return entry, predicted


def _compare(report: dict, predictions: dict, onnx_key: str, ec) -> float:
    """Agreement, the summary and the gate's settings into ``report``; returns PyTorch's accuracy
    minus the ONNX model's."""
    agreement = sum(a == b for a, b in zip(predictions["pytorch"], predictions[onnx_key])) / report["samples"]
    drop = report["pytorch"]["accuracy"] - report[onnx_key]["accuracy"]
    report["agreement"] = round(agreement, 4)
    report["summary"] = {
        "pytorch": {k: report["pytorch"][k] for k in ("accuracy", "macro_f1")},
        onnx_key: {k: report[onnx_key][k] for k in ("accuracy", "macro_f1")},
        "agreement": report["agreement"],
        "onnx_accuracy_drop": round(drop, 4),
    }
    report["gate"] = {
        "min_accuracy": ec.min_accuracy,
        "max_int4_drop": ec.max_int4_drop,
        "max_class_recall_drop": ec.max_class_recall_drop,
    }
    return drop


def quality_gate(report: dict, onnx_key: str, labels: list[str], ec, drop: float) -> dict:
    """The verdict: passed, the failures (one line each) and every check with its value and threshold.
    Also records the per-class recall drops in ``report["class_recall"]``."""
    failures = []
    if report[onnx_key]["accuracy"] < ec.min_accuracy:
        failures.append(
            f"{onnx_key} accuracy {report[onnx_key]['accuracy']:.3f} < evaluate.min_accuracy {ec.min_accuracy}"
        )
    if drop > ec.max_int4_drop:
        failures.append(f"{onnx_key} is {drop:.3f} below PyTorch, over evaluate.max_int4_drop {ec.max_int4_drop}")
    report["class_recall"], failure, checks_per_class = class_recall_check(
        report, onnx_key, labels, ec.max_class_recall_drop
    )
    if failure:
        failures.append(failure)
    return {
        "passed": not failures,
        "failures": failures,
        "checks": [
            {
                "check": f"{onnx_key} accuracy ≥ evaluate.min_accuracy",
                "value": report[onnx_key]["accuracy"],
                "threshold": ec.min_accuracy,
                "ok": report[onnx_key]["accuracy"] >= ec.min_accuracy,
            },
            {
                "check": f"PyTorch − {onnx_key} accuracy ≤ evaluate.max_int4_drop",
                "value": round(drop, 4),
                "threshold": ec.max_int4_drop,
                "ok": drop <= ec.max_int4_drop,
            },
            *checks_per_class,
        ],
    }


def class_recall_check(report: dict, onnx_key: str, labels: list[str], limit: float | None):
    """``(class_recall, failure or None, gate checks)``: classes whose INT4 recall is more than
    ``limit`` (unset: FLAG_CLASS_RECALL_DROP, flagged only) under PyTorch's."""
    drops = class_recall_drops(report, onnx_key, labels)
    flag_at = FLAG_CLASS_RECALL_DROP if limit is None else limit
    flagged = [c for c, d in drops.items() if d > flag_at]
    found = {"flag_at": flag_at, "drops": drops, "flagged": flagged}
    if limit is None:
        return found, None, []
    failure = None
    if flagged:
        worst = max(flagged, key=drops.get)
        failure = (
            f"{onnx_key} recall of class {worst!r} is {drops[worst]:.3f} below PyTorch, over "
            f"evaluate.max_class_recall_drop {limit}" + (f" ({len(flagged)} classes over)" if len(flagged) > 1 else "")
        )
    check = {
        "check": f"PyTorch − {onnx_key} recall, every class ≤ evaluate.max_class_recall_drop",
        "value": max(drops.values(), default=0.0),
        "threshold": limit,
        "ok": not flagged,
    }
    return found, failure, [check]


def class_recall_drops(report: dict, onnx_key: str, labels: list[str]) -> dict[str, float]:
    """Per class: PyTorch's recall minus the ONNX model's (positive: INT4 finds fewer of that class)."""
    return {
        label: round(
            report["pytorch"]["per_class"][label]["recall"] - report[onnx_key]["per_class"][label]["recall"], 4
        )
        for label in labels
    }


def environment(runtime) -> dict:
    """What the latency and tokens/s were measured on: they mean little without it."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    env = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device_for(runtime),
        "platform": platform.platform(terse=True),
    }
    if env["device"] == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _loadavg() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def rejected_paths(ctx: StageContext) -> tuple[Path, Path]:
    """Where a failed gate leaves its numbers and page: beside the (unsealed) Metrics output."""
    base = str(ctx.finals["metrics"])
    return Path(base + ".rejected.json"), Path(base + ".rejected.html")


def write_report(report, onnx_key, rows, predictions, model: Path, ctx: StageContext, verdict, path: Path) -> Path:
    """report.html (stages/evaluate/report.py): lineage and config from the seals' chain, the
    loss curve from the training log the merge stage carries along."""
    from core.runner import library_versions
    from stages.evaluate import report as html_report

    log_file = model / "train_log.jsonl"
    history = read_jsonl(log_file) if log_file.is_file() else None
    versions = library_versions()
    for name in ("matplotlib", "onnxruntime-genai"):
        try:
            from importlib.metadata import version

            versions.setdefault(name, version(name))
        except Exception:  # noqa: BLE001 - not installed: not listed
            pass
    html_report.write(
        path,
        identity=run_identity(ctx),
        report=report,
        onnx_key=onnx_key,
        rows=rows,
        predictions=predictions,
        lineage=ctx.lineage,
        config=ctx.chain,
        versions=versions,
        history=history,
        verdict=verdict,
    )
    return path


def run_identity(ctx: StageContext) -> dict:
    """Which run this page describes. The local runners leave RUN_DIR/run.json (config file and
    its hash, git commit); elsewhere the page says what the stage itself knows."""
    from datetime import datetime, timezone

    out = Path(ctx.finals["metrics"])
    run_dir = out.parent.parent
    found = {}
    try:
        found = read_json(run_dir / "run.json", "run")
    except UserError:
        pass
    return {
        "run_dir": found.get("run_dir") or str(run_dir),
        "config_file": found.get("config_file"),
        "config_sha256": found.get("config_sha256"),
        "git": found.get("git"),
        "started": found.get("started"),
        "evaluated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        # the runner's record of the stages so far (cached ones took no time), else the inputs' seals
        "stages": found.get("stages")
        or {seal.get("stage", name): {"seconds": seal.get("seconds")} for name, seal in ctx.input_seals.items()},
    }


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
