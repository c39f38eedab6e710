"""One run of the onnxruntime-genai model builder, checked: the stage's build and each of the
INT4 search's builds go through ``build_checked`` (its guards are the stage's, see stage.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from core.errors import UserError
from core.progress import Progress

log = logging.getLogger("slm")

REQUIRED = ("genai_config.json", "tokenizer.json", "tokenizer_config.json")


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


def layers(model: Path) -> int | None:
    """The decoder layer count the builder will read, from the model's config.json (None: unknown)."""
    try:
        n = json.loads((model / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def build_checked(model: Path, onnx_model: Path, command) -> list[str]:
    """Run ``command(cache_dir)`` (a builder command line) and check its log and output; a failure
    is a one-line UserError. Returns the command line."""
    with tempfile.TemporaryDirectory(prefix="onnx-build-cache-") as cache:
        cmd = command(Path(cache))
        log.info("model builder: %s %s on %s", cmd[cmd.index("-p") + 1], cmd[cmd.index("-e") + 1], model)
        # The builder stamps the git HEAD of any repository enclosing its install (a venv inside
        # a checkout: ours) into the graph; point git nowhere so the bytes don't depend on it.
        env = {**os.environ, "GIT_DIR": os.devnull, "PYTHONUNBUFFERED": "1"}
        returncode, build_log = run_builder(cmd, env, layers(model))
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
