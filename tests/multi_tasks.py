"""The two-task job the multi-adapter tests share (tests/test_multi_adapter.py, and the config-read
trace of tests/test_config_reads.py): the bundled tone set and a sentiment set made here with its
own labels, on the tiny Phi-3, run once a session by the conftest fixture ``multi``."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from helpers import ROOT, run_cli

from core.config import load_config
from core.models import TARGET_MODULES
from core.spec import step_name
from core.tasks import union_target_modules
from stages.adapter_build import adapter_base

POSITIVE = ["great", "lovely", "wonderful", "excellent", "superb", "delightful"]
NEGATIVE = ["awful", "terrible", "horrible", "dreadful", "boring", "ugly"]
NOUNS = ["food", "movie", "trip", "hotel", "service", "music", "weather", "show", "game", "book"]
TEMPLATE = "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"


def sentiment_rows() -> list[dict]:
    """A second task with its own labels: a noun and a clearly positive or negative adjective."""
    rows = []
    for adverb in ("", "really ", "very "):
        for noun in NOUNS:
            for words, label in ((POSITIVE, "positive"), (NEGATIVE, "negative")):
                rows += [{"text": f"The {noun} was {adverb}{w}.", "sentiment": label} for w in words]
    return rows


def multi_config(tmp: Path) -> dict:
    sentiment = tmp / "sentiment.jsonl"
    sentiment.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows()))
    return {
        "name": "multi-tiny",
        "model": {"base": "tiny-random:phi3"},
        "train": {
            "quantization": "none",
            "max_steps": 100,
            "batch_size": 8,
            "learning_rate": 0.01,
            "max_seq_len": 64,
            "checkpoint_every": 100,
            "log_every": 10,
        },
        "merge": {"parity_prompts": 2},
        "onnx": {"precision": "int4", "execution_provider": "cpu", "int4_block_size": 16},
        "evaluate": {"max_samples": 24, "batch_size": 8, "max_new_tokens": 4},
        "runtime": {"device": "cpu", "threads": 1},
        "tasks": [
            {
                "name": "tone",
                "data": {
                    "path": str(ROOT / "data" / "tone.jsonl"),
                    "text_template": TEMPLATE,
                    "max_rows": 300,
                    "eval_fraction": 0.1,
                },
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["qkv_proj", "o_proj"]},
                "gate": {"min_accuracy": 0.0},
            },
            {
                "name": "sentiment",
                "data": {
                    "path": str(sentiment),
                    "text_cols": ["text", "sentiment"],
                    "label_col": "sentiment",
                    "text_template": "<|user|>\n{text}<|end|>\n<|assistant|>\n{sentiment}<|end|>",
                    "eval_fraction": 0.15,
                },
                "lora": {
                    "r": 16,
                    "alpha": 32,
                    "dropout": 0.0,
                    "target_modules": ["qkv_proj", "gate_up_proj", "down_proj"],
                },
                "gate": {"min_accuracy": 0.0},
            },
        ],
    }


STEPS = {"dataset": "data_prep", "adapter": "train", "model": "merge", "merged_int4": "onnx_build"}


def write_config(tmp: Path, config: dict | None = None) -> Path:
    path = tmp / "multi.yaml"
    path.write_text(yaml.safe_dump(config or multi_config(tmp)))
    return path


def run_tasks(tmp: Path, env: dict | None = None) -> dict:
    """The two-task DAG as a user runs it: ``pipeline.py run --jobs 2`` on the config's ``tasks:`` (the
    local runner over pipeline.TASKS_DAG, the two tasks' steps at once: tests/test_jobs.py). Each task's
    outputs are linked under ROOT/<task>/, the served folder (adapter_build's output: base/ + adapters/)
    as ROOT/serve."""
    config = write_config(tmp)
    cfg = load_config(config)
    run = tmp / "run"
    args = ["run", "--config", str(config), "--out", str(run), "--jobs", "2"]
    proc = run_cli(str(ROOT / "pipeline.py"), *args, timeout=2400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {"cfg": cfg, "root": tmp, "run": run, "tasks": {}, "stdout": proc.stdout, "stderr": proc.stderr}
    for task in cfg.tasks:
        d = tmp / task.name
        d.mkdir()
        for name, stage in STEPS.items():
            step = step_name(stage, task.name)
            (d / name).symlink_to(next((run / step).iterdir()))  # the step's one output folder
        out["tasks"][task.name] = d
    (tmp / "serve").symlink_to(run / "adapter_build" / "onnx_base")
    # the union the config declares is the union the adapters were trained on
    assert union_target_modules(cfg, TARGET_MODULES["phi3"]) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    out["base"] = adapter_base.load(tmp / "serve" / "base")
    return out
