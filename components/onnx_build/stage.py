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
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from components.common.artifacts import write_json
from components.common.errors import UserError
from components.common.progress import Progress

log = logging.getLogger("slm")

REQUIRED = ("genai_config.json", "tokenizer.json", "tokenizer_config.json")


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


def run_builder(cmd: list[str], env: dict, layers: int | None) -> tuple[int, str]:
    """Run the builder, its output streamed: each "Reading layer N" it prints is one step of progress."""
    lines = []
    with Progress("model builder", total=layers, unit="layers read", every_pct=25) as progress:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("Reading layer "):
                    progress.update(1)
            returncode = proc.wait()
        except BaseException:  # SIGTERM or Ctrl-C: the builder must not run on (subprocess.run's rule)
            proc.kill()
            proc.wait()
            raise
    return returncode, "".join(lines)


def _layers(model: Path) -> int | None:
    """The decoder layer count the builder will read, from the model's config.json (None: unknown)."""
    try:
        n = json.loads((model / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def run(cfg, context, model: Path, onnx_model: Path, dataset: Path | None = None) -> None:
    oc = cfg.onnx
    if oc.search.enabled:
        from components.onnx_build.search import run_in_stage

        return run_in_stage(cfg, model, dataset, onnx_model)
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


def build_checked(model: Path, onnx_model: Path, command) -> list[str]:
    """Run ``command(cache_dir)`` (a builder command line) and check its log and output; a failure
    is a one-line UserError. Returns the command line."""
    with tempfile.TemporaryDirectory(prefix="onnx-build-cache-") as cache:
        cmd = command(Path(cache))
        log.info("model builder: %s %s on %s", cmd[cmd.index("-p") + 1], cmd[cmd.index("-e") + 1], model)
        # The builder stamps the git HEAD of any repository enclosing its install (a venv inside
        # a checkout: ours) into the graph; point git nowhere so the bytes don't depend on it.
        env = {**os.environ, "GIT_DIR": os.devnull, "PYTHONUNBUFFERED": "1"}
        returncode, build_log = run_builder(cmd, env, _layers(model))
    Path(onnx_model).mkdir(parents=True, exist_ok=True)
    (onnx_model / "build.log").write_text(build_log)
    if returncode != 0:
        tail = [line for line in build_log.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        if returncode in (-9, 137):
            raise UserError("the model builder was killed (out of memory?); give onnx_build more memory")
        raise UserError(f"the model builder failed (exit {returncode}): {tail[0][:300]}; see build.log")

    heads = build_log.count("Reading LM head")
    if heads != 1:
        raise UserError(
            f"the builder read the LM head {heads} times (expected once): some other layer is as wide as the "
            "vocabulary, so the exported graph would be wrong; change the model's vocab_size or layer widths"
        )
    missing = [f for f in REQUIRED if not (onnx_model / f).is_file()]
    if missing or not list(onnx_model.glob("*.onnx")):
        raise UserError(f"the builder output lacks {missing or ['*.onnx']}")
    return cmd
