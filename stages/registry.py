"""The stage registry: what each stage takes, makes, needs and is called with (core/spec.py's types).

This is data, not code paths: every engine reads it, none names a stage. Each stage's typed
parameters (``run(params: TrainParams, ctx, ...)``) are a view of the config schema
(core/params.py) declared here next to its spec: the view's fields are the sections it reads.
"""

from __future__ import annotations

from core.config import (
    DataConfig,
    EvaluateConfig,
    MergeConfig,
    ModelConfig,
    OnnxConfig,
    RuntimeConfig,
    TaskConfig,
    TrainConfig,
)
from core.params import StageParams
from core.spec import External, OutParam, Port, Resources, StageSpec, Step, TaskStep


class DataPrepParams(StageParams):
    data: DataConfig
    model: ModelConfig  # the tokenizer's chat template (data.prompt_format: chat_template)


class TrainParams(StageParams):
    model: ModelConfig
    train: TrainConfig
    runtime: RuntimeConfig


class MergeParams(StageParams):
    model: ModelConfig
    merge: MergeConfig
    runtime: RuntimeConfig


class OnnxBuildParams(StageParams):
    onnx: OnnxConfig
    runtime: RuntimeConfig


class EvaluateParams(StageParams):
    evaluate: EvaluateConfig
    runtime: RuntimeConfig


class AdapterBuildParams(StageParams):
    model: ModelConfig
    onnx: OnnxConfig
    runtime: RuntimeConfig


class EvaluateTasksParams(StageParams):
    evaluate: EvaluateConfig
    runtime: RuntimeConfig
    tasks: list[TaskConfig] | None


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec(
            name="data_prep",
            summary="Load, validate, render, deduplicate and split the dataset.",
            inputs=(),
            outputs=(Port("dataset", "Dataset", "train.jsonl, eval.jsonl, stats.json"),),
            view=DataPrepParams,
            cpu=Resources(cpu=1, memory_gb=4),
            external=(
                External("data.path"),
                External("data.eval_path"),
                External("model.base", when="data.prompt_format", equals="chat_template"),
            ),
            out_params=(
                OutParam("dataset_hash", "content hash of the dataset artifact (its seal's content_hash)"),
                OutParam("changed", "'false' when dataset_hash equals data.promoted_dataset_hash, else 'true'"),
            ),
        ),
        StageSpec(
            name="train",
            summary="QLoRA/LoRA fine-tune of the base model; checkpoints and resumes.",
            inputs=(Port("dataset", "Dataset"),),
            outputs=(Port("adapter", "Model", "PEFT adapter (safetensors), train log, metrics"),),
            view=TrainParams,
            cpu=Resources(cpu=2, memory_gb=8),
            gpu=Resources(cpu=8, memory_gb=64, gpu=1),
            gpu_count="train.gpus",
            node_count="train.nodes",
            external=(External("model.base"),),
        ),
        StageSpec(
            name="merge",
            summary="Merge the adapter into the full-precision base and check logit parity.",
            inputs=(Port("adapter", "Model"),),
            outputs=(
                Port(
                    "model",
                    "Model",
                    "merged Hugging Face model (safetensors) + tokenizer + the adapter's "
                    "train_log.jsonl (evaluate's loss curve)",
                ),
            ),
            view=MergeParams,
            cpu=Resources(cpu=2, memory_gb=16),
            # merge loads the base on runtime.device: with cuda and no GPU the harness stops it.
            gpu=Resources(cpu=8, memory_gb=64, gpu=1),
            external=(External("model.base"),),
        ),
        StageSpec(
            name="onnx_build",
            summary="Build an onnxruntime-genai model (INT4 by default) with the model builder.",
            # dataset: the eval split the INT4 recipe search scores its points on (onnx.search.enabled)
            inputs=(Port("model", "Model"), Port("dataset", "Dataset")),
            outputs=(Port("onnx_model", "OnnxModel", "onnxruntime-genai model folder"),),
            view=OnnxBuildParams,
            cpu=Resources(cpu=2, memory_gb=16),
            gpu=Resources(cpu=8, memory_gb=64, gpu=1),
        ),
        StageSpec(
            name="evaluate",
            summary="Score the PyTorch and ONNX models on the eval split; apply the quality gate.",
            inputs=(Port("dataset", "Dataset"), Port("model", "Model"), Port("onnx_model", "OnnxModel")),
            outputs=(Port("metrics", "Metrics", "metrics.json + report.html (self-contained, charts embedded)"),),
            view=EvaluateParams,
            cpu=Resources(cpu=2, memory_gb=8),
            gpu=Resources(cpu=8, memory_gb=64, gpu=1),
        ),
        # The multi-task DAG's own stages (``tasks:``, docs/multi-adapter.md).
        StageSpec(
            name="adapter_build",
            summary="Build one adapter-ready INT4 base for every task's adapter, and export each as .onnx_adapter.",
            inputs=(Port("adapter", "Model", "the task's PEFT adapter", per_task=True),),
            outputs=(
                Port(
                    "onnx_base",
                    "OnnxModel",
                    "adapter-ready onnxruntime-genai model + adapters/<task>.onnx_adapter",
                ),
            ),
            view=AdapterBuildParams,
            cpu=Resources(cpu=2, memory_gb=16),
            gpu=Resources(cpu=8, memory_gb=64, gpu=1),
            external=(External("model.base"),),
            # The base is built with the onnx section's recipe (a search picks one per merged model, and
            # one base serves every task); the builder reads the weights, the placeholder only the config.
            ignores=("onnx.search.", "model.allow_pickle"),
        ),
        StageSpec(
            name="evaluate_tasks",
            summary="Score every task switched on the one base against its merged INT4 build; apply the gates.",
            inputs=(
                Port("dataset", "Dataset", "the task's dataset", per_task=True),
                Port("onnx_model", "OnnxModel", "the task's merged INT4 build", per_task=True),
                Port("onnx_base", "OnnxModel"),
            ),
            outputs=(Port("metrics", "Metrics", "metrics.json (per task, and base + adapters memory) + report.html"),),
            view=EvaluateTasksParams,
            cpu=Resources(cpu=2, memory_gb=8),
            gpu=Resources(cpu=8, memory_gb=64, gpu=1),
            # each task has its own gate (tasks[].gate); the single-task gate's keys are not its
            ignores=("evaluate.min_accuracy", "evaluate.max_int4_drop", "evaluate.max_class_recall_drop"),
        ),
    )
}


def step(name: str, **wires: str) -> Step:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; registered: {sorted(STAGES)}")
    return Step(STAGES[name], wires)


def each_task(name: str, **wires: str) -> TaskStep:
    """A step of the multi-task DAG that runs once a task, with that task's config."""
    return TaskStep(step(name).spec, wires, each_task=True)


def once(name: str, **wires: str) -> TaskStep:
    """A step of the multi-task DAG that runs once; its per-task inputs gather every task's output."""
    return TaskStep(step(name).spec, wires)
