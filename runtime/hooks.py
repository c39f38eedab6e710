"""The engine hooks of a stage process (core/runner.py's :class:`Hook`), each chosen from the
environment the engine gives the task: its variables, or a flag only that engine's command
line carries. Order matters where one hook reads what another set (the model URI)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from core.artifacts import PARAMETERS_DIR_ENV
from core.runner import Hook, StageContext
from runtime import promotion, registries, secrets, tracking

log = logging.getLogger("slm")

KFP_FLAG = "--kfp-executor-input"  # KFP: the task's executor input ({{$}}), engines/kfp.py
MODEL_URI_FLAG = "--model-uri"  # AzureML: the azureml:// URI of the promoted model's input, engines/azureml.py


def _promoted_input(spec) -> str | None:
    """The input a promoting stage promotes (its ONNX model); None for other stages."""
    return promotion.model_port(spec) if promotion.promotes(spec) else None


class KeyVault(Hook):
    """AzureML: HF_TOKEN from the workspace Key Vault, when the node names a secret."""

    def before(self, values):
        secrets.hf_token_from_key_vault()


class AzureModelUri(Hook):
    flags = (MODEL_URI_FLAG,)

    def before(self, values):
        self.uri = values.get(MODEL_URI_FLAG)

    def after(self, ctx: StageContext):
        ctx.model_uri = ctx.model_uri or self.uri


class KfpOutput(Hook):
    """KFP: the executor output (artifact metadata, output parameters, the promoted model's lineage)."""

    flags = (KFP_FLAG,)

    def before(self, values):
        self.executor_input = json.loads(values[KFP_FLAG])

    def after(self, ctx: StageContext):
        from runtime import kfp_output

        spec = ctx.spec
        model_input = _promoted_input(spec)
        metrics_ports = [p.name for p in spec.outputs if p.type == "Metrics"]
        promoted = (
            {"model_input": model_input, "model_seal": ctx.input_seals[model_input], "lineage": ctx.lineage}
            if model_input
            else None
        )
        kfp_output.write(
            self.executor_input, ctx.output_seals, metrics_ports, ctx.finals, ctx.output_parameters, promoted
        )
        if model_input and not ctx.model_uri:
            ctx.model_uri = kfp_output.input_uri(self.executor_input, model_input)


class ParameterFiles(Hook):
    """Argo: each output parameter as a file where the template's outputs.parameters read it."""

    def after(self, ctx: StageContext):
        folder = Path(os.environ[PARAMETERS_DIR_ENV])
        if not ctx.output_parameters:
            return
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in ctx.output_parameters.items():
            part = folder / f".{name}.part"
            part.write_text(value)
            os.replace(part, folder / name)


class MlflowRun(Hook):
    def after(self, ctx: StageContext):
        tracking.log_stage(ctx.spec.name, ctx.params, ctx.finals)


class Promotion(Hook):
    """A stage that scores an ONNX model and returns has passed its gate: it promotes that model
    (the record where Argo collects it, and every model registry the environment names)."""

    def after(self, ctx: StageContext):
        model_input = _promoted_input(ctx.spec)
        metrics = next(p.name for p in ctx.spec.outputs if p.type == "Metrics")
        promotion.publish(
            ctx.spec.name,
            ctx.inputs[model_input],
            ctx.input_seals[model_input],
            ctx.finals[metrics],
            ctx.lineage,
            ctx.model_uri,
            chain=ctx.chain,
            datasets={
                p.task: ctx.input_seals[p.name].get("content_hash")
                for p in ctx.spec.inputs
                if p.task and p.type == "Dataset"
            },
        )


def from_environment(spec, argv: list[str], environ=None) -> list[Hook]:
    """The hooks this task's engine asks for, in the order they run."""
    env = os.environ if environ is None else environ
    flags = {a.split("=", 1)[0] for a in argv}
    hooks: list[Hook] = []
    if env.get(secrets.SECRET_ENV):
        hooks.append(KeyVault())
    if MODEL_URI_FLAG in flags:
        hooks.append(AzureModelUri())
    if KFP_FLAG in flags:
        hooks.append(KfpOutput())
    if env.get(PARAMETERS_DIR_ENV):
        hooks.append(ParameterFiles())
    if tracking.enabled():
        hooks.append(MlflowRun())
    if _promoted_input(spec) and any(
        env.get(k) for k in (promotion.PROMOTION_FILE_ENV, registries.AZUREML_MODEL_ENV, registries.REGISTRY_URL_ENV)
    ):
        hooks.append(Promotion())
    return hooks
