"""Score many tasks on one adapter-ready INT4 base, switching the LoRA adapter per request.

One ``og.Model`` and one ``og.Adapters`` hold the base and every task's ``.onnx_adapter``; each
batch's generator gets its task's adapter with ``set_active_adapter`` *before* ``append_tokens``
(after it, onnxruntime-genai runs the prompt without the adapter and raises nothing). Each task
is compared with its merged INT4 build, scored by the evaluate stage's own generator, prompts,
label parser and metrics. The gate fails a task whose switched accuracy is more than
``max_switch_drop`` under its merged build, or under its ``min_accuracy``.

Memory: :func:`measure_rss` loads the base + N adapters in one child process and the N merged
models side by side in another, runs one request per task in each, and reads each process's
resident set (``VmRSS``/``VmHWM`` of /proc/self/status): real process memory, not file sizes.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from core.artifacts import write_json
from core.errors import QualityGateError, UserError
from core.generators import OnnxGenerator, timed_batches
from core.io import read_json, read_jsonl
from core.prompts import parse_label
from core.scoring import classification_report

log = logging.getLogger("slm")


@dataclass(frozen=True)
class TaskEval:
    """One task to score: its dataset folder (data_prep's output), ``.onnx_adapter`` file,
    merged INT4 build, and gate."""

    name: str
    dataset: Path
    adapter: Path
    merged: Path
    min_accuracy: float = 0.0
    max_switch_drop: float = 0.01


class SwitchingGenerator(OnnxGenerator):
    """The evaluate stage's ONNX generator over one base holding every task's adapter."""

    def __init__(self, base: Path, adapters: dict[str, Path], max_new_tokens: int):
        super().__init__(base, max_new_tokens)
        self.adapters = self.og.Adapters(self.model)
        for name, file in adapters.items():
            try:
                self.adapters.load(str(file), name)
            except Exception as e:  # noqa: BLE001 - onnxruntime-genai raises its own RuntimeError
                raise UserError(f"cannot load adapter {file} into {base}: {str(e).splitlines()[0]}") from None
        self.active: str | None = None  # None: the plain base

    def new_generator(self, params):
        generator = super().new_generator(params)
        if self.active is not None:
            generator.set_active_adapter(self.adapters, self.active)  # before append_tokens
        return generator


def score(gen, rows: list[dict], labels: list[str], batch_size: int) -> tuple[dict, list]:
    """The evaluate stage's metrics for ``gen`` on ``rows``, and its predicted labels."""
    texts, speed = timed_batches(gen, [r["prompt"] for r in rows], batch_size)
    predicted = [parse_label(t, labels) for t in texts]
    return {**classification_report([r["label"] for r in rows], predicted, labels), **speed}, predicted


def _task_rows(task: TaskEval, max_samples: int | None) -> tuple[list[dict], list[str]]:
    labels = read_json(task.dataset / "stats.json", "dataset")["labels"]
    return read_jsonl(task.dataset / "eval.jsonl")[:max_samples], labels


def evaluate_tasks(base: Path, tasks: list[TaskEval], ec, out: Path, memory: bool = True) -> dict:
    """Score every task switched on ``base`` and merged; write ``out``/metrics.json; fail the gate.

    ``ec``: the evaluate section (batch_size, max_new_tokens, max_samples); ``memory``: add
    :func:`measure_rss` of base + adapters against the merged builds (``report["memory"]``)."""
    switched = SwitchingGenerator(base, {t.name: t.adapter for t in tasks}, ec.max_new_tokens)
    report: dict = {"base": str(base), "tasks": {}}
    failures = []
    for task in tasks:
        rows, labels = _task_rows(task, ec.max_samples)
        switched.active = task.name
        on_base, pred_switched = score(switched, rows, labels, ec.batch_size)
        merged, pred_merged = score(OnnxGenerator(task.merged, ec.max_new_tokens), rows, labels, ec.batch_size)
        drop = round(merged["accuracy"] - on_base["accuracy"], 4)
        agreement = round(sum(a == b for a, b in zip(pred_switched, pred_merged)) / max(len(rows), 1), 4)
        ok_drop, ok_floor = drop <= task.max_switch_drop, on_base["accuracy"] >= task.min_accuracy
        if not ok_drop:
            failures.append(
                f"{task.name}: switched accuracy {on_base['accuracy']:.3f} is {drop:.3f} under its "
                f"merged build's {merged['accuracy']:.3f}, over max_switch_drop {task.max_switch_drop}"
            )
        if not ok_floor:
            failures.append(
                f"{task.name}: switched accuracy {on_base['accuracy']:.3f} < min_accuracy {task.min_accuracy}"
            )
        report["tasks"][task.name] = {
            "samples": len(rows),
            "labels": labels,
            "switched": on_base,
            "merged": merged,
            "switched_minus_merged": -drop,
            "agreement": agreement,
            "gate": {
                "max_switch_drop": task.max_switch_drop,
                "min_accuracy": task.min_accuracy,
                "passed": ok_drop and ok_floor,
            },
        }
        log.info(
            "%s: switched %.3f, merged %.3f, agreement %.3f",
            task.name,
            on_base["accuracy"],
            merged["accuracy"],
            agreement,
        )
    if memory:
        report["memory"] = measure_rss(base, {t.name: t.adapter for t in tasks}, [t.merged for t in tasks])
    report["verdict"] = {"passed": not failures, "failures": failures}
    report["summary"] = {  # what `pipeline.py runs` and the run's summary.json show
        name: {"switched_accuracy": t["switched"]["accuracy"], "merged_accuracy": t["merged"]["accuracy"]}
        for name, t in report["tasks"].items()
    }
    if memory:
        report["summary"]["memory_ratio_rss"] = report["memory"]["ratio_rss"]
    out.mkdir(parents=True, exist_ok=True)
    name = "metrics.json" if not failures else "metrics.rejected.json"  # a failed gate leaves no metrics.json
    write_json(out / name, report)
    if failures:
        raise QualityGateError("quality gate failed: " + "; ".join(failures) + f" (full report: {out / name})")
    return report


# The child process of measure_rss: load, answer one request per model/adapter, report memory.
_RSS_CHILD = r"""
import json, sys
import onnxruntime_genai as og
spec = json.loads(sys.argv[1])
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
before = rss()
def answer(model, adapters=None, name=None):
    tok = og.Tokenizer(model)
    tokens = tok.encode(spec["prompt"])
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(tokens) + 8, do_sample=False)
    gen = og.Generator(model, params)
    if adapters is not None:
        gen.set_active_adapter(adapters, name)
    gen.append_tokens(tokens)
    while not gen.is_done():
        gen.generate_next_token()
kept = []
if spec["base"]:
    model = og.Model(spec["base"])
    adapters = og.Adapters(model)
    for name, file in spec["adapters"].items():
        adapters.load(file, name)
    for name in spec["adapters"]:
        answer(model, adapters, name)
    kept = [model, adapters]
else:
    for path in spec["merged"]:
        kept.append(og.Model(path))
        answer(kept[-1])
print(json.dumps({"before_load": before, "after": rss()}))
"""


def _child_rss(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, json.dumps(spec)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"the memory measurement's child process failed: {tail[:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_rss(base: Path, adapters: dict[str, Path], merged: list[Path], prompt: str = "Hello") -> dict:
    """Process memory of base + N adapters in one process vs the N merged models side by side in another."""
    one = _child_rss({"base": str(base), "adapters": {k: str(v) for k, v in adapters.items()}, "prompt": prompt})
    many = _child_rss({"base": None, "merged": [str(m) for m in merged], "prompt": prompt})
    return {
        "base_plus_adapters": one,
        "merged_side_by_side": many,
        "adapters": len(adapters),
        "ratio_rss": round(one["after"]["VmRSS"] / many["after"]["VmRSS"], 4),
        "ratio_peak": round(one["after"]["VmHWM"] / many["after"]["VmHWM"], 4),
        # what the models add to a bare interpreter with onnxruntime-genai imported
        "ratio_added": round(
            (one["after"]["VmRSS"] - one["before_load"]["VmRSS"])
            / max(many["after"]["VmRSS"] - many["before_load"]["VmRSS"], 1),
            4,
        ),
    }
