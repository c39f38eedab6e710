"""The entry point every stage shares: argv -> typed config -> ``run(...)`` -> sealed outputs.

``python -m components.<stage> --<input> DIR ... --<output> DIR ... --<section.key> VALUE``
is the same command line on every target. The harness checks the input markers, gives the
stage temporary output folders, and seals them only when ``run`` returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from . import artifacts, promotion, secrets, tracking
from .artifacts import PARAMETERS_DIR_ENV
from .cache import cache_key
from .config import Config, describe, parse_value, set_path, validate
from .errors import TRANSIENT, UserError, exit_code, first_line

log = logging.getLogger("slm")


class Interrupted(BaseException):
    """SIGTERM/SIGINT reached the stage: clean up and exit 143."""


def _parser(spec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {spec.module}", description=spec.summary)
    for port in spec.inputs:
        p.add_argument(f"--{port.name}", required=True, metavar="DIR", help=f"input {port.type} artifact")
    for port in spec.outputs:
        p.add_argument(f"--{port.name}", required=True, metavar="DIR", help=f"output {port.type} artifact")
    for key, default in spec.params(Config(), every=True).items():
        p.add_argument(f"--{key}", dest=key, metavar="VALUE", help=f"{describe(key)} (default: {default!r})".lstrip())
    p.add_argument(
        "--model-uri",
        metavar="URI",
        help="the promoted model's location as the engine names it (AzureML: "
        "the azureml:// URI of the ONNX model input), for the model registry (components/common/registries.py)",
    )
    p.add_argument(
        "--kfp-executor-input",
        metavar="JSON",
        help="on Kubeflow Pipelines: the task's executor input "
        "({{$}}); the stage then also writes KFP's executor output (components/common/kfp_output.py)",
    )
    return p


def _joined(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--flag value`` as ``--flag=value``: every flag takes one value, so a value starting with
    "-" (a file named ``-d.jsonl``, a negative number) is never read as another flag."""
    flags = {s for a in parser._actions for s in a.option_strings if a.nargs is None and a.const is None}
    out, i = [], 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _setup_runtime(runtime) -> None:
    import torch

    threads = runtime.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device is cuda but no CUDA device is visible; use runtime.device=cpu or auto")


def _ignore_signals() -> None:
    """Cleanup has begun: a second Ctrl-C or SIGTERM must not cut it short with a traceback."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _raise_interrupted(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def main(stage_name: str, run: Callable[..., dict | None], argv: list[str] | None = None) -> None:
    from ..registry import STAGES

    spec = STAGES[stage_name]
    logging.basicConfig(level=logging.INFO, format=f"[{stage_name}] %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns that its optional hub-downloaded CPU kernels are absent; it falls back to torch.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not sys.stderr.isatty():
        # Off a terminal the libraries' own bars (transformers' "Loading weights") would write \r
        # into log files; our progress lines (components/common/progress.py) say it instead.
        # Set before the stage imports transformers, which reads it once.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    parser = _parser(spec)
    args = vars(parser.parse_args(_joined(parser, sys.argv[1:] if argv is None else argv)))
    signal.signal(signal.SIGTERM, _raise_interrupted)
    tmps: dict[str, Path] = {}
    started = time.time()
    try:
        secrets.hf_token_from_key_vault()  # AzureML: HF_TOKEN from the workspace Key Vault, when the node names one
        tree: dict = {}
        for key in spec.params(Config(), every=True):
            if args.get(key) is not None:
                set_path(tree, key, parse_value(args[key]))
        cfg = validate(tree, where=f"{stage_name} parameters")
        params = spec.params(cfg)
        view = SimpleNamespace(**{s: getattr(cfg, s) for s in spec.sections})
        if "runtime" in spec.sections:
            _setup_runtime(cfg.runtime)
        inputs = {p.name: Path(args[p.name]) for p in spec.inputs}
        markers = {name: artifacts.verify(path, p.type) for (name, path), p in zip(inputs.items(), spec.inputs)}
        input_hashes = {name: m["content_hash"] for name, m in markers.items()}
        # Every seal carries the parameters of its whole chain: the lineage of a promoted model.
        chain, lineage = promotion.lineage_from_seals(stage_name, params, markers)
        key = cache_key(spec, params, input_hashes)
        finals = {p.name: Path(args[p.name]) for p in spec.outputs}
        for name, path in finals.items():
            # Named before it exists: a SIGTERM inside begin(), right after the mkdir, still cleans it up.
            tmps[name] = artifacts.tmp_path(path)
            tmps[name] = artifacts.begin(path)
        context = SimpleNamespace(
            cache_key=key,
            finals=finals,
            spec=spec,
            after_commit=[],
            output_parameters={},
            lineage=lineage,
            chain=chain,
            input_seals={p.name: markers[p.name] for p in spec.inputs},  # their stage and seconds: the report's timings
        )
        run(view, context=context, **inputs, **tmps)
        out_params = _output_parameters(spec, context.output_parameters)
        markers_out = {}
        for port in spec.outputs:
            markers_out[port.name] = artifacts.commit(
                tmps[port.name],
                finals[port.name],
                {
                    "stage": stage_name,
                    "output": port.name,
                    "type": port.type,
                    "cache_key": key,
                    "params": params,
                    "inputs": input_hashes,
                    "versions": library_versions(),
                    "seconds": round(time.time() - started, 2),
                    **({"parameters": out_params} if out_params else {}),
                    "lineage_params": chain,
                },
            )
        for hook in context.after_commit:
            hook()
        tracking.log_stage(stage_name, params, finals)  # MLflow, only when MLFLOW_TRACKING_URI is set
        executor_input = json.loads(args["kfp_executor_input"]) if args.get("kfp_executor_input") else None
        # A stage that scores an ONNX model and returns has passed its gate: it promotes that model.
        model_input = (
            next((p.name for p in spec.inputs if p.type == "OnnxModel"), None) if promotion.promotes(spec) else None
        )
        if executor_input is not None:
            from . import kfp_output

            metrics_ports = [p.name for p in spec.outputs if p.type == "Metrics"]
            # On KFP the metrics artifact says so, with the lineage and the promoted model's URI.
            promoted = (
                {"model_input": model_input, "model_seal": markers[model_input], "lineage": lineage}
                if model_input
                else None
            )
            kfp_output.write(executor_input, markers_out, metrics_ports, finals, out_params, promoted)
        _write_parameter_files(out_params)
        if model_input:
            metrics_dir = finals[next(p.name for p in spec.outputs if p.type == "Metrics")]
            model_uri = args.get("model_uri")
            if not model_uri and executor_input is not None:
                from .kfp_output import input_uri

                model_uri = input_uri(executor_input, model_input)
            promotion.publish(stage_name, inputs[model_input], markers[model_input], metrics_dir, lineage, model_uri)
        for name, value in out_params.items():
            log.info("output parameter %s = %s", name, value)
        log.info("done in %.1fs", time.time() - started)
    except UserError as e:
        _ignore_signals()
        _abort(tmps)
        print(f"error: [{stage_name}] {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (Interrupted, KeyboardInterrupt) as e:
        _ignore_signals()
        _abort(tmps)
        print(f"error: [{stage_name}] interrupted ({e or 'SIGINT'}); no output was written", file=sys.stderr)
        sys.exit(143)
    except Exception as e:
        _ignore_signals()
        _abort(tmps)
        code = exit_code(e)
        if code == 137:
            why = "out of memory; lower the batch size or give the stage more memory"
        elif code == 2:
            why = f"disk full while writing ({first_line(e)}); free space and re-run"
        else:
            kind = "a transient failure, retried by the engines" if code == TRANSIENT else "an internal error"
            why = f"failed unexpectedly ({kind}): {first_line(e, with_type=True)}"
            if os.environ.get("SLM_DEBUG"):
                traceback.print_exc()
            else:
                why += " (re-run with --debug for the traceback)"
        print(f"error: [{stage_name}] {why}; no output was written", file=sys.stderr)
        sys.exit(code)


def _output_parameters(spec, values: dict) -> dict[str, str]:
    declared = [p.name for p in spec.out_params]
    if set(values) != set(declared):
        raise RuntimeError(f"stage set output parameters {sorted(values)}, the registry declares {sorted(declared)}")
    return {name: str(values[name]) for name in declared}


def _write_parameter_files(values: dict[str, str]) -> None:
    folder = os.environ.get(PARAMETERS_DIR_ENV)
    if not folder or not values:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        part = Path(folder) / f".{name}.part"
        part.write_text(value)
        os.replace(part, Path(folder) / name)


def _abort(tmps: dict[str, Path]) -> None:
    for tmp in tmps.values():
        artifacts.abort(tmp)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "onnxruntime-genai", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
