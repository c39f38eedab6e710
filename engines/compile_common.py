"""What the three cluster adapters (kfp, azureml, argo) share, written once.

- ``RUN_PARAMETERS``: the config knobs a user changes per run. Each becomes a pipeline
  parameter on every engine; every other stage parameter is compiled in from the config.
- ``image_for``: the image of a stage. The image builder imports it too.
- ``settings``: the typed per-target section of the config (``targets.kfp`` ...).
- the naming, typing and encoding rules that turn a registry parameter into an engine
  parameter, so that the engine's command line is the local runner's command line.

No adapter names a stage: they iterate ``for step in dag`` over the stage registry.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core import cron, names
from core.config import Config, format_validation_error
from core.errors import UserError
from core.spec import Pipeline, StageSpec, Step

# The per-run knobs, as dotted config keys. Order is the order shown in each engine's UI.
RUN_PARAMETERS: tuple[str, ...] = (
    "data.path",
    "data.promoted_dataset_hash",  # the data-change trigger (pipeline.py DAG.condition)
    "model.base",
    "train.lora.r",
    "train.max_steps",
    "onnx.precision",
    "onnx.int4_algo_config",
    "onnx.int4_block_size",
    "evaluate.min_accuracy",
    "evaluate.max_int4_drop",
)

# Inside every image the repository is the working directory; stages run as
# ``python -m stages.<stage>`` from there.
WORKDIR = "/app"
STAGE_ENV = {"PYTHONPATH": WORKDIR, "PYTHONUNBUFFERED": "1"}
GPU_RESOURCE = "nvidia.com/gpu"

# The model-cache volume (manifests/: PVC ``slm-model-cache``), mounted at /cache in every
# stage. It holds what must outlive a pod: downloaded base models, the embedded model's
# conversion, and train checkpoints keyed by cache key, so a retried or preempted train
# task resumes where the last attempt stopped.
CACHE_CLAIM = "slm-model-cache"
CACHE_MOUNT = "/cache"
CACHE_ENV = {
    "HF_HOME": f"{CACHE_MOUNT}/huggingface",
    "SLM_CACHE_DIR": f"{CACHE_MOUNT}/slm",
    "SLM_CHECKPOINT_DIR": f"{CACHE_MOUNT}/checkpoints",
}

# Exit codes no retry can fix: bad input or config (2) and a failed quality gate (3).
# Every other failure (OOM kill 137, preemption 143, a crash 1) is worth a retry.
DETERMINISTIC_EXIT_CODES = (2, 3, 4)  # bad input, failed gate, internal error (core/errors.py)


def image_for(spec: StageSpec, cfg: Config) -> str:
    """``<registry>/<stage>:<tag>``, with the GPU suffix on the tag where the stage uses a GPU."""
    return image_name(cfg, spec.name, gpu=spec.uses_gpu(cfg))


def image_name(cfg: Config, name: str, gpu: bool = False) -> str:
    """Every image's name, the stages' and the shared base's (engines/images.py)."""
    tag = cfg.images.tag + (cfg.images.gpu_tag_suffix if gpu else "")
    return f"{cfg.images.registry.rstrip('/')}/{name}:{tag}"


# ---------------------------------------------------------------------------------------
# Per-target settings: ``targets: {kfp: {...}, azureml: {...}, argo: {...}}`` in the config.


class EngineSettings(BaseModel):
    """What every engine's ``targets.<engine>`` section has; each engine module subclasses it."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no bool-to-int or str-to-bool coercion

    # The Hugging Face token comes from a secret, by reference only; null: no secret.
    # Names are checked as the engine checks them (core/names.py), at load time.
    hf_token_secret: names.DnsSubdomain | None = "hf-token"
    hf_token_key: names.SecretKey = "token"
    hf_token_env: names.EnvVar = "HF_TOKEN"
    retries: int = Field(2, ge=0)
    retry_backoff_seconds: int = Field(60, ge=0)
    # Retrain on a schedule: a cron in the engine's dialect (cron_dialect; core/cron.py).
    schedule: str | None = None
    cron_dialect: ClassVar[str] = "argo"
    schedule_timezone: names.TimeZone = "UTC"

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v):
        if v is not None:
            cron.parse(v, cls.cron_dialect)
        return v


def settings(cfg: Config, target: str) -> Any:
    """The typed ``targets.<target>`` section (the engine's ``Target.settings`` model, see
    engines/base.py); a typo is a UserError naming the key (load_config already checked it)."""
    from .base import get

    raw = (cfg.targets or {}).get(target) or {}
    if not isinstance(raw, dict):
        raise UserError(f"config: targets.{target}: expected a mapping, got {type(raw).__name__}")
    try:
        return get(target).settings.model_validate(raw)
    except ValidationError as err:
        model = get(target).settings
        raise UserError(format_validation_error(err, "config", model=model, prefix=f"targets.{target}.")) from None


# ---------------------------------------------------------------------------------------
# Schedules


def cron_fields(expr: str, dialect: str = "argo") -> list[str]:
    """The fields of a cron expression as the engine ``dialect`` parses it (core/cron.py)."""
    return cron.parse(expr, dialect)


kfp_cron = cron.kfp_cron


# ---------------------------------------------------------------------------------------
# Parameters: names, kinds, values


def param_name(key: str) -> str:
    """The engine-side name of a dotted config key: ``train.lora.r`` -> ``train_lora_r``."""
    return key.replace(".", "_")


def k8s_name(name: str) -> str:
    """A DNS-1123 name for a stage (``data_prep`` -> ``data-prep``)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def value_kind(value: Any) -> str:
    """``int | float | bool | str | list | dict | null``: the type a parameter is declared with."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    for kind in (int, float, str, list, dict):
        if isinstance(value, kind):
            return kind.__name__
    raise UserError(f"cannot compile a parameter of type {type(value).__name__}: {value!r}")


def check_names(dag: Pipeline, cfg: Config) -> None:
    """Every run parameter is read by some stage, and no two keys share an engine name."""
    keys = {k for step in dag for k in step.params(cfg)}
    # a multi-task DAG takes the run parameters its steps read (a task's own keys are compiled in)
    missing = [] if any(step.task for step in dag) else [k for k in RUN_PARAMETERS if k not in keys]
    if missing:
        raise UserError(f"RUN_PARAMETERS names keys no stage reads: {missing}")
    seen: dict[str, str] = {}
    for key in sorted(keys):
        other = seen.setdefault(param_name(key), key)
        if other != key:
            raise UserError(f"parameters {other!r} and {key!r} have the same engine name {param_name(key)!r}")
    stage_names: dict[str, str] = {}
    for step in dag:
        other = stage_names.setdefault(k8s_name(step.name), step.name)
        if other != step.name:
            raise UserError(f"stages {other!r} and {step.name!r} have the same Kubernetes name")


def run_parameters(dag: Pipeline, cfg: Config) -> dict[str, Any]:
    """``{"data.path": "data/tone.jsonl", ...}``: the run parameters and their config values."""
    check_names(dag, cfg)
    values: dict[str, Any] = {}
    for step in dag:
        values.update({k: v for k, v in step.params(cfg).items() if step.binds(k)})
    return {k: values[k] for k in RUN_PARAMETERS if k in values}


def bound_run_keys(step: Step, cfg: Config, run_params: dict[str, Any]) -> list[str]:
    """The run parameters a step takes from the pipeline's inputs (a task's own keys are compiled in)."""
    return [k for k in step.params(cfg) if k in run_params and step.binds(k)]


def pipeline_signature(
    run_params: dict[str, Any], annotation: Callable[[Any], Any], default: Callable[[Any], Any]
) -> list[inspect.Parameter]:
    """The pipeline function's parameters, one per run parameter: both SDKs (kfp, azure-ai-ml)
    read a pipeline's inputs from its Python signature; the adapter gives the engine's types."""
    return [
        inspect.Parameter(
            param_name(k), inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation(v), default=default(v)
        )
        for k, v in run_params.items()
    ]


def task_params(spec: StageSpec, cfg: Config) -> dict[str, Any]:
    """The parameters a compiled task declares. A null that is also the stage's default, and not
    a run parameter, is left out (no input, no ``--key null`` flag): the stage uses its default."""
    unset = spec.unset_params()
    return {k: v for k, v in spec.params(cfg).items() if not (v is None and k in unset and k not in RUN_PARAMETERS)}


def needs_hf_token(spec: StageSpec, cfg: Config) -> bool:
    """Stages that read the base model (may download it from the hub) get the token."""
    return "model.base" in spec.params(cfg)


def out_path(out: str | Path, default_name: str) -> Path:
    """The file compile writes (``pipeline.py`` has claimed it through the output guard); parents
    are created only as the guard allows."""
    from core.outputs import make_parents

    path = Path(out)
    if path.is_dir():
        path = path / default_name
    make_parents(path.parent, str(out))
    return path
