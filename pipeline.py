#!/usr/bin/env python
"""The command line, and the DAG: the only place the pipeline's wiring is written.

Every target (local subprocesses, docker, Kubeflow Pipelines, AzureML, Argo) is an adapter in
``engines/`` over ``DAG`` and over the stage registry in ``stages/registry.py``; the engines
are the registry of ``engines/base.py`` (one module per engine defines its ``Target``).
``HELP`` below is what ``--help`` shows users.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import cli.olive  # noqa: F401 - plugs the Olive import into load_config
from cli.verbs import add_verbs
from core.errors import UserError
from core.spec import Condition, Pipeline, TaskPipeline
from stages.registry import each_task, once, step

DAG = Pipeline(
    name="slm-finetune",
    steps=(
        step("data_prep"),
        step("train", dataset="data_prep.dataset"),
        step("merge", adapter="train.adapter"),
        step("onnx_build", model="merge.model", dataset="data_prep.dataset"),
        step("evaluate", dataset="data_prep.dataset", model="merge.model", onnx_model="onnx_build.onnx_model"),
    ),
    # The data-change trigger: with data.promoted_dataset_hash set to the promoted model's
    # dataset hash, an unchanged dataset ends the run after data_prep.
    condition=Condition(
        step="data_prep", param="changed", equals="true", reason="dataset unchanged since the promoted model"
    ),
)

# A multi-task job (``tasks:``, docs/multi-adapter.md): each task's data_prep, train, merge and
# merged INT4 build in parallel; one adapter-ready INT4 base for all the adapters; one evaluation
# that serves every task from that base, switching per request, against its merged build.
TASKS_DAG = TaskPipeline(
    name="slm-finetune-tasks",
    steps=(
        each_task("data_prep"),
        each_task("train", dataset="data_prep.dataset"),
        each_task("merge", adapter="train.adapter"),
        each_task("onnx_build", model="merge.model", dataset="data_prep.dataset"),
        once("adapter_build", adapter="train.adapter"),
        once(
            "evaluate_tasks",
            dataset="data_prep.dataset",
            onnx_model="onnx_build.onnx_model",
            onnx_base="adapter_build.onnx_base",
        ),
    ),
)


def dag_for(cfg) -> Pipeline:
    """The DAG a config runs: its tasks' (``tasks:``), or the single-task one."""
    return TASKS_DAG.expand(t.name for t in cfg.tasks) if cfg.tasks else DAG


HELP = """Fine-tune a small language model into an evaluated INT4 ONNX model.

    data_prep ──► train ──► merge ──► onnx_build ──► evaluate
        └───────────────────────┴──────────────────────┘ (dataset, merged model)

    python pipeline.py run      --config configs/default.yaml --out runs/default [--set k=v ...]
    python pipeline.py compile  --target kfp|azureml|argo --config C --out PATH
    python pipeline.py validate [--target kfp|azureml|argo] [--strict] PATH
    python pipeline.py submit   --target kfp|azureml|argo --config C [--set k=v ...] [--wait]
    python pipeline.py status   --target kfp|azureml|argo RUN_ID [--wait]
    python pipeline.py schedule --target kfp|azureml|argo --config C [--cron "0 3 * * 1"]
    python pipeline.py tune-int4 --run RUN [--set onnx.search.max_minutes=5]
    python pipeline.py import-olive OLIVE_JSON --out configs/NAME.yaml
    python pipeline.py stages   (the stage registry, as a table)
    python pipeline.py runs     [--root runs]   (local runs: status, metrics, promoted or not)

Start here: `make run` (the whole DAG on the bundled data, CPU, a few minutes), then open
runs/default/evaluate/metrics/report.html. `python pipeline.py VERB --help` has each verb's
options and examples; `run --help` lists every config key. Errors are one line and a hint;
--debug (before or after the verb) shows tracebacks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (here and in the stages) instead of one-line errors"
    )
    # --debug also works after the verb: `pipeline.py run --debug ...`
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_verbs(parser, debug)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["SLM_DEBUG"] = "1"  # the stages print their tracebacks too
    signal.signal(signal.SIGTERM, _terminated)  # like Ctrl-C: the runner stops its stage before exiting
    try:
        return args.handler(args, dag_for)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        print(
            f"hint: python pipeline.py {args.command} --help has the options and examples; --debug shows the traceback",
            file=sys.stderr,
        )
        return e.exit_code
    except KeyboardInterrupt:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second one must not print a traceback
            signal.signal(signum, signal.SIG_IGN)
        if args.debug:
            raise
        print(
            "error: interrupted; the stage in flight was stopped and left no output (training keeps its last "
            "checkpoint): re-run the same command to continue",
            file=sys.stderr,
        )
        return 130
    except ModuleNotFoundError as e:  # the runtime install (requirements.txt) has no cluster clients
        if args.debug:
            raise
        print(
            f"error: {args.command} needs the Python module {e.name!r}, which is not installed; "
            "`make setup-dev` adds the cluster clients and test tools (requirements-dev.txt)",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        if args.debug:
            raise
        from core.errors import exit_code, first_line

        print(f"error: {first_line(e, with_type=True)} (re-run with --debug for the traceback)", file=sys.stderr)
        return exit_code(e)


def _terminated(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
