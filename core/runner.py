"""The stage core every stage shares: argv -> typed parameters -> ``run(...)`` -> sealed outputs.

``python -m stages.<stage> --<input> DIR ... --<output> DIR ... --<section.key> VALUE`` is the
same command line on every engine. :func:`run_stage` parses it into the stage's view
(``spec.view``, core/params.py), verifies the input seals, gives the stage temporary output
folders and calls ``run(params, ctx, **ports)``; it seals the outputs only when ``run`` returns. Whatever an engine
adds (KFP's executor output, Argo's parameter files, Key Vault, MLflow, promotion and the model
registries) is a :class:`Hook`, chosen from the environment by runtime/hooks.py: this module
knows no engine. One map, :func:`failure`, turns an exception into the exit code and the line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core import artifacts, ranks
from core.cache import cache_key
from core.config import Config, describe, parse_value, set_path
from core.errors import TRANSIENT, UserError, exit_code, first_line
from core.lineage import lineage_from_seals
from core.params import StageParams
from core.spec import StageSpec

log = logging.getLogger("slm")


class Interrupted(BaseException):
    """SIGTERM/SIGINT reached the stage: clean up and exit 143."""


@dataclass
class StageContext:
    """What a stage's ``run`` and the hooks are given besides its parameters."""

    spec: StageSpec
    cache_key: str
    params: dict  # the stage's flat parameters, as sealed
    inputs: dict[str, Path]
    input_seals: dict[str, dict]  # their stage and seconds: the report's timings
    finals: dict[str, Path]  # where the outputs land once sealed
    chain: dict  # every upstream stage's parameters and this one's: the lineage of a promoted model
    lineage: dict
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    output_parameters: dict[str, str] = field(default_factory=dict)
    output_seals: dict[str, dict] = field(default_factory=dict)  # set once sealed
    model_uri: str | None = None  # the promoted model's location as the engine names it (hooks set it)


class Hook:
    """Engine work around a stage. ``flags``: the command-line flags it owns (each takes one
    value), taken out of argv before the stage's own parser sees it."""

    flags: tuple[str, ...] = ()

    def before(self, values: dict[str, str]) -> None:
        """Before the config is read; ``values``: this hook's flags as given."""

    def after(self, ctx: StageContext) -> None:
        """Once every output is sealed."""


class _IntoTree(argparse.Action):
    """``--train.lora.r 16`` -> ``params["train"]["lora"]["r"] = 16``: the parameter flags build the
    view's tree as they are read (``parse_value`` inverts ``core.config.encode``)."""

    def __call__(self, parser, namespace, value, option_string=None):
        set_path(namespace.params, self.dest, parse_value(value, option_string))


def _parser(spec: StageSpec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {spec.module}", description=spec.summary)
    for port in spec.inputs:
        p.add_argument(f"--{port.name}", required=True, metavar="DIR", help=f"input {port.type} artifact")
    for port in spec.outputs:
        p.add_argument(f"--{port.name}", required=True, metavar="DIR", help=f"output {port.type} artifact")
    for key, default in spec.params(Config(), every=True).items():
        help = f"{describe(key)} (default: {default!r})".lstrip()
        p.add_argument(f"--{key}", dest=key, action=_IntoTree, default=argparse.SUPPRESS, metavar="VALUE", help=help)
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


def take_flags(argv: list[str], flags) -> tuple[list[str], dict[str, str]]:
    """``argv`` without ``flags`` (``--f v`` or ``--f=v``), and their values by flag."""
    rest, values, i = [], {}, 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in flags and eq:
            values[name] = value
        elif argv[i] in flags and i + 1 < len(argv):
            values[argv[i]] = argv[i + 1]
            i += 1
        else:
            rest.append(argv[i])
        i += 1
    return rest, values


# The step a runner started this process as (``train_tone`` of a multi-task DAG): the log and error
# lines' prefix, so that steps of one stage running side by side can be told apart.
STEP_ENV = "SLM_STEP"


def _label(spec) -> str:
    return os.environ.get(STEP_ENV) or spec.name


def _logging(stage: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns that its optional hub-downloaded CPU kernels are absent; it falls back to torch.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not sys.stderr.isatty():
        # Off a terminal the libraries' own bars (transformers' "Loading weights") would write \r
        # into log files; our progress lines (core/progress.py) say it instead.
        # Set before the stage imports transformers, which reads it once.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


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


def failure(e: BaseException) -> tuple[int, str]:
    """The one map from what stopped a stage to its exit code and its one line."""
    if isinstance(e, UserError):
        return e.exit_code, str(e)
    if isinstance(e, (Interrupted, KeyboardInterrupt)):
        return 143, f"interrupted ({e or 'SIGINT'}); no output was written"
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
    return code, f"{why}; no output was written"


def run_stage(spec: StageSpec, run: Callable[..., None], argv: list[str], hooks: list[Hook] = ()) -> None:
    """Parse, verify the inputs, run, seal, then the hooks; exits non-zero on any failure."""
    _logging(_label(spec))
    argv, values = take_flags(argv, {f for h in hooks for f in h.flags})
    if any(p.per_task for p in spec.inputs):  # a gathering stage: its ports are the tasks' (core/spec.py)
        tasks = spec.tasks_in(argv) or (("TASK",) if {"-h", "--help"} & set(argv) else ())  # help: the pattern
        if not tasks:
            gathered = ", ".join(f"--{p.name}_<task>" for p in spec.inputs if p.per_task)
            print(
                f"error: [{_label(spec)}] no per-task inputs given: it takes {gathered} for each task", file=sys.stderr
            )
            sys.exit(2)
        spec = spec.for_tasks(tasks)
    parser = _parser(spec)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    tmps: dict[str, Path] = {}
    started = time.time()
    try:
        # In here: a value the bounded YAML reader refuses is the one-line error below.
        args = vars(parser.parse_args(_joined(parser, argv), namespace=argparse.Namespace(params={})))
        for hook in hooks:
            hook.before({f: values[f] for f in hook.flags if f in values})
        writer = ranks.writes_outputs()
        params, ctx = _prepare(spec, args, tmps, writer)
        run(params, ctx, **ctx.inputs, **tmps)
        if not writer:  # another node of a multi-node run: node 0 writes and seals the outputs
            for tmp in tmps.values():
                artifacts.abort(tmp)
            log.info("done in %.1fs; node 0 writes the outputs", time.time() - started)
            return
        _seal(ctx, tmps, started)
        for done in ctx.after_commit:
            done()
        for hook in hooks:
            hook.after(ctx)
        for name, value in ctx.output_parameters.items():
            log.info("output parameter %s = %s", name, value)
        log.info("done in %.1fs", time.time() - started)
    except BaseException as e:  # noqa: BLE001 - every way out is one line and one exit code
        if isinstance(e, SystemExit):
            raise
        _ignore_signals()
        for tmp in tmps.values():
            artifacts.abort(tmp)
        code, line = failure(e)
        print(f"error: [{_label(spec)}] {line}", file=sys.stderr)
        sys.exit(code)


def _prepare(
    spec: StageSpec, args: dict, tmps: dict[str, Path], writer: bool = True
) -> tuple[StageParams, StageContext]:
    view = spec.view.from_tree(args["params"], where=f"{spec.name} parameters")
    params = spec.params(view)
    if "runtime" in spec.sections:
        _setup_runtime(view.runtime)
    inputs = {p.name: Path(args[p.name]) for p in spec.inputs}
    seals = {p.name: artifacts.verify(inputs[p.name], p.type) for p in spec.inputs}
    chain, lineage = lineage_from_seals(spec.name, params, seals, {p.name: p.task for p in spec.inputs if p.task})
    finals = {p.name: Path(args[p.name]) for p in spec.outputs}
    for name, path in finals.items():
        if not writer:  # never next to the shared output: node 0's temporary lives there
            tmps[name] = Path(tempfile.mkdtemp(prefix=f"slm-{spec.name}-{name}-"))
            continue
        # Named before it exists: a SIGTERM inside begin(), right after the mkdir, still cleans it up.
        tmps[name] = artifacts.tmp_path(path)
        tmps[name] = artifacts.begin(path)
    key = cache_key(spec, params, {n: s["content_hash"] for n, s in seals.items()})
    ctx = StageContext(spec, key, params, inputs, seals, finals, chain, lineage)
    return view, ctx


def _seal(ctx: StageContext, tmps: dict[str, Path], started: float) -> None:
    spec = ctx.spec
    declared = [p.name for p in spec.out_params]
    if set(ctx.output_parameters) != set(declared):
        raise RuntimeError(
            f"stage set output parameters {sorted(ctx.output_parameters)}, the registry declares {sorted(declared)}"
        )
    ctx.output_parameters = {name: str(ctx.output_parameters[name]) for name in declared}
    for port in spec.outputs:
        ctx.output_seals[port.name] = artifacts.commit(
            tmps[port.name],
            ctx.finals[port.name],
            {
                "stage": spec.name,
                "output": port.name,
                "type": port.type,
                "cache_key": ctx.cache_key,
                "params": ctx.params,
                "inputs": {n: s["content_hash"] for n, s in ctx.input_seals.items()},
                "versions": library_versions(),
                "seconds": round(time.time() - started, 2),
                **({"parameters": ctx.output_parameters} if ctx.output_parameters else {}),
                "lineage_params": ctx.chain,
            },
        )


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "onnxruntime-genai", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
