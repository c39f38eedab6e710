"""onnx_build: merged Hugging Face model -> onnxruntime-genai model (INT4 by default).

Runs the onnxruntime-genai model builder in a child process, so its memory is returned
when it exits and its log can be checked. Two guards against silent breakage:
- the builder treats every Linear as wide as the vocabulary as the LM head; a config where
  another layer has that width gives a wrong graph with no error. The stage requires
  "Reading LM head" exactly once in the builder's log;
- the output must hold ``genai_config.json``, the ONNX graph and the tokenizer files.

INT4 defaults keep accuracy: k_quant with the LM head and the most sensitive layers in
int8 (``k_quant_mixed``), block size 16 (docs/field-notes.md: the builder's own defaults lost
25 points on SmolLM2-135M). The builder's scratch cache is a fresh temporary folder each
run, so no stale cache can leak into an export.

With ``onnx.search.enabled`` the stage searches the INT4 recipe instead (search.py) on the
dataset's eval split, ships the chosen build and records the front in build_info.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.artifacts import write_json
from core.runner import StageContext
from stages.onnx_build.build import build_checked
from stages.registry import OnnxBuildParams

# Run as `python -m` below, so the code hash takes its pins as if imported (hashing.code_hash).
__runs__ = ("onnxruntime_genai.models.builder", "onnx", "onnx_ir", "onnxscript")


def builder_command(model: Path, out: Path, cache: Path, oc) -> list[str]:
    options = dict(oc.extra_options)
    if oc.precision == "int4":
        options = {
            "algo_config": oc.int4_algo_config,
            "block_size": str(oc.int4_block_size),
            "accuracy_level": str(oc.int4_accuracy_level),
            **options,
        }
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model),
        "-o",
        str(out),
        "-p",
        oc.precision,
        "-e",
        oc.execution_provider,
        "-c",
        str(cache),
    ]
    if options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    return cmd


def run(
    params: OnnxBuildParams, ctx: StageContext | None, model: Path, onnx_model: Path, dataset: Path | None = None
) -> None:
    """``ctx`` is unused: the multi-adapter base build (adapter_base.py) calls this outside a stage run."""
    oc = params.onnx
    if oc.search.enabled:
        from stages.onnx_build.search import run_in_stage

        return run_in_stage(params, model, dataset, onnx_model)
    cmd = build_checked(model, onnx_model, lambda cache: builder_command(model, onnx_model, cache, oc))
    genai = json.loads((onnx_model / "genai_config.json").read_text())
    write_json(
        onnx_model / "build_info.json",
        {
            "precision": oc.precision,
            "execution_provider": oc.execution_provider,
            "options": cmd[cmd.index("--extra_options") + 1 :] if "--extra_options" in cmd else [],
            "model_type": genai["model"]["type"],
            "bytes": sum(p.stat().st_size for p in onnx_model.iterdir() if p.is_file() and p.name != "build.log"),
        },
    )
