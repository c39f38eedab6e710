"""Issue 21 on the embedded SmolLM2-135M: two tasks, one adapter-ready INT4 base, switched per request.

    .venv/bin/python bench/multi_adapter.py OUT_DIR [--steps 40]
    .venv/bin/python bench/multi_adapter.py OUT_DIR --memory-only

Each task runs the real data_prep, train, merge and onnx_build stage processes (its merged INT4
build); then the shared base, the adapter exports, switched-vs-merged scoring and the memory of
base + 2 adapters against the 2 merged builds side by side (process RSS). Writes OUT_DIR/result.json.

``--memory-only`` skips training: two random-valued PEFT adapters (the tasks' ranks and targets)
and two plain INT4 builds of the base stand in for the merged builds. Memory does not depend on
the values, and a merged build has the base's shapes and size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import yaml  # noqa: E402
from helpers import stage_cli  # noqa: E402 - the tests' stage-process runner
from multi_tasks import sentiment_rows  # noqa: E402 - the tests' second task

from core.config import encode, load_config  # noqa: E402
from core.models import TARGET_MODULES, resolve  # noqa: E402
from core.tasks import task_config, union_target_modules  # noqa: E402
from stages.adapter_build import adapter_base, adapter_export  # noqa: E402
from stages.evaluate.stage import folder_bytes  # noqa: E402
from stages.evaluate_tasks import switching  # noqa: E402
from stages.registry import STAGES, OnnxBuildParams  # noqa: E402


def run_stage(stage: str, cfg, timeout: int = 600, **ports: Path) -> None:
    """One stage process, as every engine runs it: its ports and its config sections as flags."""
    args = [x for name, path in ports.items() for x in (f"--{name}", str(path))]
    args += [x for k, v in STAGES[stage].params(cfg).items() for x in (f"--{k}", encode(v))]
    proc = stage_cli(stage, *args, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{stage}: {proc.stderr[-3000:]}")


def config(out: Path, steps: int) -> dict:
    (out / "sentiment.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows()))
    return {
        "name": "multi-smollm2",
        "train": {"max_steps": steps, "batch_size": 8, "checkpoint_every": 1000},
        "evaluate": {"max_samples": 120, "batch_size": 16, "max_new_tokens": 6},
        "runtime": {"device": "cpu", "threads": 1},  # 1 thread: far faster on shared cores (field notes)
        "tasks": [
            {
                "name": "tone",
                "data": {"path": str(ROOT / "data" / "tone.jsonl")},
                "lora": {"r": 16, "alpha": 32},
                "gate": {"min_accuracy": 0.0},
            },
            {
                "name": "sentiment",
                "data": {
                    "path": str(out / "sentiment.jsonl"),
                    "text_cols": ["text", "sentiment"],
                    "label_col": "sentiment",
                },
                "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
                "gate": {"min_accuracy": 0.0},
            },
        ],
    }


def memory_only(cfg, out: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from core.models import load_model
    from stages.onnx_build import stage as onnx_stage

    base_dir = adapter_base.base_folder(cfg.model)
    adapters = {}
    for task in cfg.tasks:
        torch.manual_seed(0)
        lora = LoraConfig(
            r=task.lora.r,
            lora_alpha=task.lora.alpha,
            init_lora_weights=False,
            target_modules=task.lora.target_modules or TARGET_MODULES["llama"],
        )
        adapters[task.name] = out / task.name / "adapter"
        get_peft_model(load_model(cfg.model), lora).save_pretrained(adapters[task.name])
    start = time.perf_counter()
    base = adapter_base.build_for_adapters(cfg, list(adapters.values()), out / "serve" / "base")
    seconds = {"adapter_base": round(time.perf_counter() - start, 1)}
    files = {}
    for name, adapter in adapters.items():
        files[name] = out / "serve" / "adapters" / f"{name}.onnx_adapter"
        adapter_export.export(adapter, base, files[name])
    merged = []
    for name in adapters:
        merged.append(out / name / "merged_int4")
        start = time.perf_counter()
        onnx_stage.run(OnnxBuildParams.of(cfg), None, base_dir, merged[-1])
        seconds[f"{name}.int4_build"] = round(time.perf_counter() - start, 1)
    return {
        "seconds": seconds,
        "memory": switching.measure_rss(base.path, files, merged),
        "bytes": {
            "base": folder_bytes(base.path),
            **{n: f.stat().st_size for n, f in files.items()},
            **{str(m.parent.name) + ".merged": folder_bytes(m) for m in merged},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--memory-only", action="store_true")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "multi.yaml").write_text(yaml.safe_dump(config(out, args.steps)))
    cfg = load_config(out / "multi.yaml")
    if args.memory_only:
        result = memory_only(cfg, out)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    seconds, tasks = {}, []
    for task in cfg.tasks:
        tc, d = task_config(cfg, task.name), out / task.name
        for stage, ports in (
            ("data_prep", {"dataset": d / "dataset"}),
            ("train", {"dataset": d / "dataset", "adapter": d / "adapter"}),
            ("merge", {"adapter": d / "adapter", "model": d / "model"}),
            ("onnx_build", {"model": d / "model", "dataset": d / "dataset", "onnx_model": d / "merged_int4"}),
        ):
            start = time.perf_counter()
            if not list(ports.values())[-1].exists():  # its output: a rerun resumes
                run_stage(stage, tc, timeout=3600, **ports)
            seconds[f"{task.name}.{stage}"] = round(time.perf_counter() - start, 1)
        tasks.append(d)
    start = time.perf_counter()
    targets = union_target_modules(cfg, TARGET_MODULES["llama"])
    where = out / "serve" / "base"
    base = (
        adapter_base.load(where)
        if where.exists()
        else adapter_base.build(cfg, Path(resolve(cfg.model.base)), targets, where)
    )
    seconds["adapter_base"] = round(time.perf_counter() - start, 1)
    evals = []
    for task, d in zip(cfg.tasks, tasks):
        file = out / "serve" / "adapters" / f"{task.name}.onnx_adapter"
        adapter_export.export(d / "adapter", base, file)
        evals.append(switching.TaskEval(task.name, d / "dataset", file, d / "merged_int4"))
    report = switching.evaluate_tasks(base.path, evals, cfg.evaluate, out / "metrics")
    memory = report["memory"]
    result = {
        "seconds": seconds,
        "accuracy": {n: {k: t[k]["accuracy"] for k in ("switched", "merged")} for n, t in report["tasks"].items()},
        "agreement": {n: t["agreement"] for n, t in report["tasks"].items()},
        "memory": memory,
        "bytes": {
            "base": folder_bytes(base.path),
            **{e.name: e.adapter.stat().st_size for e in evals},
            **{f"{e.name}.merged": folder_bytes(e.merged) for e in evals},
        },
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
