"""How the INT4 search scores a model: as the evaluate stage does (its generators, greedy
decoding, label parser), so a searched point and the gate's numbers agree. Kept apart from the
search's walk: a cached score depends on this file, not on how the search chose its points."""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from core.io import read_json, read_jsonl


def eval_rows(dataset: Path, max_samples: int | None) -> tuple[list[str], list[str], list[str]]:
    labels = read_json(dataset / "stats.json", "dataset")["labels"]
    rows = read_jsonl(dataset / "eval.jsonl")[:max_samples]
    if not rows:
        raise UserError(f"{dataset}/eval.jsonl has no rows to score the INT4 search on")
    return [r["prompt"] for r in rows], [r["label"] for r in rows], labels


def score(gen, prompts, truth, labels, batch_size: int, latency_samples: int) -> dict:
    """As evaluate scores a model: batched accuracy and tokens/s, then batch-1 latency."""
    from core.generators import timed, timed_batches
    from core.prompts import parse_label
    from core.scoring import classification_report, percentile

    gen.generate(prompts[:batch_size])  # warm-up, not timed
    gen.generated_tokens = 0
    texts, speed = timed_batches(gen, prompts, batch_size)
    predicted = [parse_label(t, labels) for t in texts]
    report = classification_report(truth, predicted, labels)
    gen.generate(prompts[:1])
    latencies = [timed(gen, [p])[1] for p in prompts[:latency_samples]]
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "unparsed": report["unparsed"],
        "tokens_per_second": speed["tokens_per_second"],
        "prompts_per_second": round(len(prompts) / max(speed["seconds"], 1e-9), 2),
        "latency_ms_p50": round(percentile(latencies, 0.5) * 1000, 2),
        "latency_ms_p95": round(percentile(latencies, 0.95) * 1000, 2),
        "latency_samples": len(latencies),
        "predicted": predicted,
    }
