"""evaluate: score the merged PyTorch model and the ONNX model on the held-out split.

Both models get the same prompts, greedy decoding and label parser
(``components.common.prompts.parse_label``), so their numbers and their agreement are
comparable. Accuracy runs batched; latency is measured per prompt at batch 1 on a
sample. The quality gate (``evaluate.min_accuracy`` on the ONNX model,
``evaluate.max_int4_drop`` versus PyTorch) fails the stage with the numbers in the message.

Output (Metrics artifact): ``report.html`` (components/evaluate/report.py: one self-contained
page with the lineage, loss curve, confusion matrices, agreement and the gate's verdict) and
``metrics.json`` with a ``summary`` block
(``{"pytorch": {"accuracy", "macro_f1"}, "onnx_int4": {...}, "agreement": ...}``) and the
full reports: per-class precision/recall, confusion matrices, tokens/s, latency, sizes.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch

from components.common.artifacts import write_json
from components.common.errors import QualityGateError, UserError
from components.common.io import read_json, read_jsonl
from components.common.models import device_for, load_model, load_tokenizer
from components.common.progress import Progress
from components.common.prompts import parse_label
from components.common.scoring import classification_report, percentile

log = logging.getLogger("slm")
LATENCY_SAMPLES = 16


def run(cfg, context, dataset: Path, model: Path, onnx_model: Path, metrics: Path) -> None:
    ec = cfg.evaluate
    labels = read_json(dataset / "stats.json", "dataset")["labels"]
    rows = read_jsonl(dataset / "eval.jsonl")[: ec.max_samples]
    prompts, truth = [r["prompt"] for r in rows], [r["label"] for r in rows]
    if not (onnx_model / "genai_config.json").is_file():
        raise UserError(f"{onnx_model} has no genai_config.json; it is not an onnxruntime-genai model")
    build_info = read_json(onnx_model / "build_info.json", "onnx model")
    onnx_key = f"onnx_{build_info.get('precision', 'int4')}"
    if build_info.get("execution_provider") == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise UserError(
                f"{onnx_model} was built for CUDA but this onnxruntime ({onnxruntime.__version__}) has no "
                "CUDAExecutionProvider: install onnxruntime-gpu (and onnxruntime-genai-cuda) in the evaluate image, "
                "or build with onnx.execution_provider=cpu"
            )
    onnx_gen = OnnxGenerator(onnx_model, ec.max_new_tokens)  # first: fails fast, before the PyTorch load
    torch_gen = TorchGenerator(model, device_for(cfg.runtime), ec.max_new_tokens)
    report = {"labels": labels, "samples": len(rows)}
    predictions = {}
    for name, gen in (("pytorch", torch_gen), (onnx_key, onnx_gen)):
        gen.generate(prompts[: ec.batch_size])  # warm-up (CUDA context, kernels, allocator): not timed
        gen.generated_tokens = 0
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
        report[name] = {
            **classification_report(truth, predicted, labels),
            **speed,
            "latency_ms_p50": round(percentile(latencies, 0.5) * 1000, 2),
            "latency_ms_p95": round(percentile(latencies, 0.95) * 1000, 2),
            "size_bytes": folder_bytes(gen.path),
            "examples": [
                {"prompt": p[-80:], "generated": t, "label": y} for p, t, y in list(zip(prompts, texts, truth))[:5]
            ],
        }
        predictions[name] = predicted
        log.info(
            "%s: accuracy %.3f, macro-F1 %.3f, %.0f tokens/s",
            name,
            report[name]["accuracy"],
            report[name]["macro_f1"],
            speed["tokens_per_second"],
        )

    agreement = sum(a == b for a, b in zip(predictions["pytorch"], predictions[onnx_key])) / len(rows)
    drop = report["pytorch"]["accuracy"] - report[onnx_key]["accuracy"]
    report["agreement"] = round(agreement, 4)
    report["summary"] = {
        "pytorch": {k: report["pytorch"][k] for k in ("accuracy", "macro_f1")},
        onnx_key: {k: report[onnx_key][k] for k in ("accuracy", "macro_f1")},
        "agreement": report["agreement"],
        "onnx_accuracy_drop": round(drop, 4),
    }
    report["gate"] = {"min_accuracy": ec.min_accuracy, "max_int4_drop": ec.max_int4_drop}
    write_json(metrics / "metrics.json", report)

    failures = []
    if report[onnx_key]["accuracy"] < ec.min_accuracy:
        failures.append(
            f"{onnx_key} accuracy {report[onnx_key]['accuracy']:.3f} < evaluate.min_accuracy {ec.min_accuracy}"
        )
    if drop > ec.max_int4_drop:
        failures.append(f"{onnx_key} is {drop:.3f} below PyTorch, over evaluate.max_int4_drop {ec.max_int4_drop}")
    verdict = {
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
        ],
    }
    page = write_report(report, onnx_key, rows, predictions, model, context, verdict, metrics / "report.html")
    if failures:
        rejected = Path(str(context.finals["metrics"]) + ".rejected.json")
        write_json(rejected, report)
        shutil.copyfile(page, rejected.with_suffix(".html"))
        raise QualityGateError(
            "quality gate failed: " + "; ".join(failures) + f" (full report: {rejected}, "
            f"{rejected.with_suffix('.html')})"
        )


def write_report(report, onnx_key, rows, predictions, model: Path, context, verdict, path: Path) -> Path:
    """report.html (components/evaluate/report.py): lineage and config from the seals' chain, the
    loss curve from the training log the merge stage carries along."""
    from components.common.harness import library_versions
    from components.evaluate import report as html_report

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
        report=report,
        onnx_key=onnx_key,
        rows=rows,
        predictions=predictions,
        lineage=getattr(context, "lineage", {}) or {},
        config=getattr(context, "chain", {}) or {},
        versions=versions,
        history=history,
        verdict=verdict,
    )
    log.info("report: %s", context.finals["metrics"] / "report.html")
    return path


def timed(gen, prompts: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = gen.generate(prompts)
    return texts, time.perf_counter() - start


def timed_batches(gen, prompts: list[str], batch_size: int, progress=None) -> tuple[list[str], dict]:
    texts, seconds = [], 0.0
    for i in range(0, len(prompts), batch_size):
        out, dt = timed(gen, prompts[i : i + batch_size])
        texts += out
        seconds += dt
        if progress is not None:
            progress.update(len(out))
    return texts, {
        "seconds": round(seconds, 3),
        "tokens_per_second": round(gen.generated_tokens / max(seconds, 1e-9), 1),
    }


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def until_eos(tokens: list[int], stop: set[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence: what tokens/s counts."""
    return next((i + 1 for i, t in enumerate(tokens) if t in stop), len(tokens))


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


class TorchGenerator:
    def __init__(self, path: Path, device: str, max_new_tokens: int):
        self.path, self.device, self.max_new_tokens = path, device, max_new_tokens
        self.tokenizer = load_tokenizer(str(path))
        self.tokenizer.padding_side = "left"
        self.model = load_model(str(path), dtype="bfloat16" if device == "cuda" else "float32", device=device).eval()
        self.generated_tokens = 0

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> list[str]:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        out = self.model.generate(
            **batch,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        self.generated_tokens += sum(
            until_eos(seq, {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}) for seq in new
        )
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


class OnnxGenerator:
    def __init__(self, path: Path, max_new_tokens: int):
        if read_json(Path(path) / "build_info.json", "onnx model").get("execution_provider") == "cuda":
            _preload_cuda_libraries()
        import onnxruntime_genai as og

        self.og, self.path, self.max_new_tokens = og, path, max_new_tokens
        try:
            self.model = og.Model(str(path))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"onnxruntime-genai cannot load {path}: {str(e).splitlines()[0]}") from None
        self.tokenizer = og.Tokenizer(self.model)
        genai = read_json(Path(path) / "genai_config.json", "onnx model")["model"]
        self.stop_ids = {t for k in ("eos_token_id", "pad_token_id") for t in _as_list(genai.get(k))}
        self.generated_tokens = 0
        self.decode_positions = 0  # rows x decoding steps, EOS or not: what raw decode throughput counts

    def generate(self, prompts: list[str]) -> list[str]:
        og = self.og
        tokens = self.tokenizer.encode_batch(prompts)
        params = og.GeneratorParams(self.model)
        width = tokens.as_numpy().shape[1]
        params.set_search_options(max_length=width + self.max_new_tokens, batch_size=len(prompts), do_sample=False)
        generator = og.Generator(self.model, params)
        generator.append_tokens(tokens)
        steps = 0
        while not generator.is_done() and steps < self.max_new_tokens:
            generator.generate_next_token()
            steps += 1
        self.decode_positions += steps * len(prompts)
        texts = []
        for i in range(len(prompts)):
            new = generator.get_sequence(i)[width:].tolist()
            texts.append(self.tokenizer.decode(new))
            self.generated_tokens += until_eos(new, self.stop_ids)
        return texts


def _preload_cuda_libraries() -> None:
    """For a CUDA build: load the CUDA/cuDNN libraries of the nvidia-* wheels into this process
    (onnxruntime-gpu's ``preload_dlls``), so its CUDA provider finds them without LD_LIBRARY_PATH."""
    try:
        import onnxruntime

        if hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()
    except Exception as e:  # noqa: BLE001 - LD_LIBRARY_PATH may still provide them
        log.info("onnxruntime.preload_dlls: %s", e)
