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
from pathlib import Path

import cli.olive  # noqa: F401 - plugs the Olive import into load_config
from core.errors import UserError
from core.spec import Condition, Pipeline
from stages.registry import step

DAG = Pipeline(
    name="slm-finetune",
    steps=(
        step("data_prep"),
        step("train", dataset="data_prep.dataset"),
        step("merge", adapter="train.adapter"),
        step("onnx_build", model="merge.model"),
        step("evaluate", dataset="data_prep.dataset", model="merge.model", onnx_model="onnx_build.onnx_model"),
    ),
    # The data-change trigger: with data.promoted_dataset_hash set to the promoted model's
    # dataset hash, an unchanged dataset ends the run after data_prep.
    condition=Condition(
        step="data_prep", param="changed", equals="true", reason="dataset unchanged since the promoted model"
    ),
)


HELP = """Fine-tune a small language model into an evaluated INT4 ONNX model.

    data_prep ──► train ──► merge ──► onnx_build ──► evaluate
        └───────────────────────┴──────────────────────┘ (dataset, merged model)

    python pipeline.py run      --config configs/default.yaml --out runs/default [--set k=v ...]
    python pipeline.py compile  --target kfp|azureml|argo --config C --out PATH
    python pipeline.py validate [--target kfp|azureml|argo] [--strict] PATH
    python pipeline.py submit   --target kfp|azureml|argo --config C [--set k=v ...] [--wait]
    python pipeline.py status   --target kfp|azureml|argo RUN_ID [--wait]
    python pipeline.py schedule --target kfp|azureml|argo --config C [--cron "0 3 * * 1"]
    python pipeline.py import-olive OLIVE_JSON --out configs/NAME.yaml
    python pipeline.py stages   (the stage registry, as a table)
    python pipeline.py runs     [--root runs]   (local runs: status, metrics, promoted or not)

Start here: `make run` (the whole DAG on the bundled data, CPU, a few minutes), then open
runs/default/evaluate/metrics/report.html. `python pipeline.py VERB --help` has each verb's
options and examples; `run --help` lists every config key. Errors are one line and a hint;
--debug (before or after the verb) shows tracebacks."""

# Every input path an example names exists in the repo (tests/test_cli.py checks).
EXAMPLES = {
    "compile": """examples:
  python pipeline.py compile --target kfp --config configs/phi3-mini.yaml --out build/kfp/pipeline.yaml
  python pipeline.py compile --target azureml --config configs/phi3-mini.yaml --out build/azureml
  python pipeline.py compile --target argo --config tests/data/olive-phi3.json \\
      --set images.registry=ghcr.io/me/slm --out build/argo/workflow.yaml

Each config key becomes a pipeline parameter (with its description) where the run may change it.
Images in no registry a cluster can pull from (localhost/..., the default) get a warning unless
images.registry is set: push them first (make push REGISTRY=...), README "Containers".""",
    "validate": """examples:
  python pipeline.py validate tests/golden/kfp/pipeline.yaml
  python pipeline.py validate --target azureml tests/golden/azureml
  python pipeline.py validate --strict tests/golden/argo/workflow.yaml   # exit 2: its images are localhost/...""",
    "submit": """examples:
  python pipeline.py submit --target kfp --host https://kfp.example.com --config configs/phi3-mini.yaml --wait
  python pipeline.py submit --target argo --namespace slm-pipeline --set train.max_steps=200
  python pipeline.py submit --target azureml --subscription SUB --resource-group RG --workspace WS""",
    "status": """examples:
  python pipeline.py status --target kfp RUN_ID
  python pipeline.py status --target argo --wait slm-finetune-abc12""",
    "schedule": """examples:
  python pipeline.py schedule --target kfp --cron "0 3 * * 1" --config configs/phi3-mini.yaml
  python pipeline.py schedule --target azureml --timezone Europe/Berlin""",
    "stages": """example:
  python pipeline.py stages""",
    "runs": """examples:
  python pipeline.py runs
  python pipeline.py runs --root runs/my-run""",
    "import-olive": """examples:
  python pipeline.py import-olive tests/data/olive-cookbook/olive-config.json --out configs/phi3-tone.yaml
  python pipeline.py run --config configs/phi3-tone.yaml --out runs/phi3-tone
  python pipeline.py run --config tests/data/olive-phi3.json --out runs/try \\
      --set model.base=tiny-random:phi3 --set runtime.device=cpu --set onnx.execution_provider=cpu  # no file""",
}


def _run_epilog() -> str:
    """Examples, then every config key that --set takes, with its default and description."""
    from core.config import Config, describe, flatten

    lines = [
        "examples:",
        "  python pipeline.py run --out runs/default                          # the embedded default job",
        "  python pipeline.py run --config configs/tiny-phi3.yaml --out runs/tiny --set train.max_steps=4",
        "  python pipeline.py run --config configs/default.yaml --out runs/mine --set data.path=data/tone.jsonl "
        "--set data.eval_fraction=0.2",
        "  python pipeline.py run --config tests/data/olive-phi3.json --out runs/olive "
        "--set model.base=tiny-random:phi3 --set runtime.device=cpu --set onnx.execution_provider=cpu",
        "",
        "config keys (--set KEY=VALUE; values are YAML: 8, true, [a, b]):",
    ]
    for key, default in flatten(Config()).items():
        if key == "targets":
            continue
        lines.append(f"  {key} = {default!r}")
        lines.append(f"      {describe(key)}")
    lines.append("  targets.<kfp|azureml|argo>.* : per-engine settings (docs/compile.md)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (here and in the stages) instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # --debug also works after the command: `pipeline.py run --debug ...`
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, parents=(), **k: _add_parser(
        *a,
        parents=[debug, *parents],
        **{
            "formatter_class": argparse.RawDescriptionHelpFormatter,
            **({"description": k["help"][0].upper() + k["help"][1:] + "."} if "help" in k else {}),
            **k,
        },
    )
    config_help = (
        "a YAML config (configs/*.yaml) or an Olive JSON config (imported as by import-olive); default: %(default)s"
    )
    set_help = "override one config key, e.g. --set train.lora.r=8 (repeatable; the keys: pipeline.py run --help)"

    run = sub.add_parser("run", help="run the DAG on this machine", epilog=_run_epilog())
    run.add_argument("--config", default="configs/default.yaml", help=config_help)
    run.add_argument(
        "--out",
        required=True,
        help="run folder; artifacts go to OUT/<stage>/<output>/, OUT/summary.json and OUT/evaluate/metrics/report.html",
    )
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    run.add_argument(
        "--runner",
        choices=["subprocess", "docker", "kfp-local"],
        default="subprocess",
        help="subprocess: each stage as a local process; docker: each stage in its image; "
        "kfp-local: the compiled KFP pipeline under KFP's own local orchestrator (DockerRunner)",
    )
    run.add_argument("--no-cache", action="store_true", help="re-run every stage")

    from engines.base import names as target_names

    engines = target_names()
    comp = sub.add_parser("compile", help="compile the DAG for a cluster engine", epilog=EXAMPLES["compile"])
    comp.add_argument("--target", choices=engines, required=True, help="the engine")
    comp.add_argument("--config", default="configs/default.yaml", help=config_help)
    comp.add_argument(
        "--out", required=True, help="kfp/argo: a .yaml file; azureml: a folder (pipeline.yml + components/)"
    )
    comp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    comp.add_argument("--force", action="store_true", help="overwrite files an earlier compile wrote at --out")

    val = sub.add_parser(
        "validate", help="check a compiled file strictly, references included", epilog=EXAMPLES["validate"]
    )
    val.add_argument("path", metavar="PATH", help="what compile wrote: a .yaml file (kfp, argo) or a folder (azureml)")
    val.add_argument("--target", choices=engines, help="the engine (optional: guessed from the file)")
    val.add_argument(
        "--strict",
        action="store_true",
        help="also fail (exit 2) when the images are in no registry a cluster can pull from (localhost/...)",
    )

    # Talking to a cluster. Where it is comes from these flags or the engine's env vars;
    # credentials only from the environment, a kube context or the Azure identity.
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--target", choices=engines, required=True, help="the engine")
    conn.add_argument(
        "--host",
        help="KFP: the API endpoint (else KF_PIPELINES_ENDPOINT, else the kube context); "
        "Argo: the Argo Server URL (else ARGO_SERVER)",
    )
    conn.add_argument(
        "--namespace",
        help="Argo: the workflow namespace (else targets.argo.namespace, ARGO_NAMESPACE); "
        "KFP: the user namespace on multi-user installs",
    )
    conn.add_argument(
        "--subscription", dest="subscription_id", help="AzureML (else AZURE_SUBSCRIPTION_ID or config.json)"
    )
    conn.add_argument(
        "--resource-group", dest="resource_group", help="AzureML (else AZURE_RESOURCE_GROUP or config.json)"
    )
    conn.add_argument("--workspace", help="AzureML (else AZUREML_WORKSPACE_NAME or config.json)")
    cfg_args = argparse.ArgumentParser(add_help=False)
    cfg_args.add_argument("--config", default="configs/default.yaml", help=config_help)
    cfg_args.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)

    subm = sub.add_parser(
        "submit", parents=[conn, cfg_args], help="submit a run to a cluster engine", epilog=EXAMPLES["submit"]
    )
    subm.add_argument(
        "--wait",
        action="store_true",
        help="follow the run to its end, one line per stage state change; exit non-zero if it failed",
    )
    stat = sub.add_parser(
        "status", parents=[conn], help="the stage table of a submitted run", epilog=EXAMPLES["status"]
    )
    stat.add_argument("run_id", metavar="RUN_ID", help="the run's id, as submit printed it (Argo: the Workflow name)")
    stat.add_argument("--wait", action="store_true", help="follow the run to its end")
    sched = sub.add_parser(
        "schedule",
        parents=[conn, cfg_args],
        help="retrain on a cron schedule on a cluster engine",
        epilog=EXAMPLES["schedule"],
    )
    sched.add_argument("--cron", help='a 5-field cron, e.g. "0 3 * * 1" (default: targets.<target>.schedule)')
    sched.add_argument("--timezone", help="default: targets.<target>.schedule_timezone (UTC)")

    imp = sub.add_parser(
        "import-olive",
        help="convert a Microsoft Olive JSON config into a config of ours",
        description="""Convert an Olive config into our YAML, with both generations of its keys: the Phi-3
CookBook's older PyTorchModel/params_config/lora_r keys and the current
HfModel/load_dataset_config/r keys. The written file starts with a comment header listing
every Olive key: what it was mapped to, and what was not imported and why. Relative data
paths resolve against the Olive file's folder, as in Olive. `run --config olive.json` and
`compile --config olive.json` use the same import.""",
        epilog=EXAMPLES["import-olive"],
    )
    imp.add_argument("olive", metavar="OLIVE_JSON", help="the Olive config file")
    imp.add_argument("--out", required=True, help="the YAML config to write, e.g. configs/<name>.yaml")
    imp.add_argument("--force", action="store_true", help="overwrite an existing --out file")

    sub.add_parser(
        "stages", help="print the stage registry: inputs, outputs, parameters, resources", epilog=EXAMPLES["stages"]
    )

    runs = sub.add_parser(
        "runs", help="list local runs: status, metrics, promotion (promoted.json)", epilog=EXAMPLES["runs"]
    )
    runs.add_argument("--root", default="runs", help="a run folder, or a folder of run folders (default: runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["SLM_DEBUG"] = "1"  # the stages print their tracebacks too
    signal.signal(signal.SIGTERM, _terminated)  # like Ctrl-C: the runner stops its stage before exiting
    try:
        return _dispatch(args)
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


def _dag_config(path, overrides):
    """The config the DAG runs: a ``tasks:`` list is refused until the DAG fans out over it (issue 21),
    so it is never silently run as the single task of data/train/evaluate."""
    from core.config import load_config

    cfg = load_config(path, overrides)
    if cfg.tasks:
        raise UserError(
            f"the config sets tasks: ({len(cfg.tasks)}); the pipeline does not fan out over tasks yet: "
            "build and serve them with the steps of docs/multi-adapter.md, or remove tasks:"
        )
    return cfg


def _dispatch(args) -> int:
    from core.outputs import claim, config_inputs

    load_config = _dag_config

    if args.command == "stages":
        from engines.local import print_stages

        print_stages(DAG)
        return 0
    if args.command == "import-olive":
        return _import_olive(args.olive, args.out, args.force)
    if args.command == "runs":
        from engines.local import list_runs, print_runs

        print_runs(list_runs(Path(args.root)))
        return 0
    if args.command == "run":
        cfg = load_config(args.config, args.overrides)
        claim(args.out, inputs=config_inputs(args.config, cfg), run=True)
        if args.runner == "kfp-local":
            from engines.kfp_local import run_pipeline as run_kfp_local

            return run_kfp_local(DAG, cfg, args.out)
        if args.runner == "docker":
            from engines.docker import run_pipeline
        else:
            from engines.local import run_pipeline
        return run_pipeline(DAG, cfg, args.out, use_cache=not args.no_cache, config_file=args.config)
    if args.command == "compile":
        from engines.base import get

        cfg = load_config(args.config, args.overrides)
        target = get(args.target)
        path = claim(
            args.out,
            inputs=config_inputs(args.config, cfg),
            folder=target.writes_folder,
            default_name=target.default_out,
            also=target.written(DAG),
            force=args.force,
        )
        target.compile(DAG, cfg, path)
        print(f"wrote {path}")
        _warn_local_images(cfg)
        return 0
    if args.command in ("submit", "status", "schedule"):
        return _cluster(args, load_config)
    if args.command == "validate":
        from engines.validate import validate_file

        _check_text_file(args.path)
        validate_file(args.path, args.target, strict=args.strict)
        print(f"{args.path}: valid")
        return 0
    return 2


def _warn_local_images(cfg) -> None:
    """One line on stderr when the compiled images are in no registry a cluster reaches, unless
    images.registry was set on purpose (a kind cluster's localhost:5000 is fine then)."""
    if "registry" in cfg.images.model_fields_set:
        return
    from engines.compile_common import image_for
    from engines.validate import registry_warning
    from stages.registry import STAGES

    warning = registry_warning([image_for(spec, cfg) for spec in STAGES.values()])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _cluster(args, load_config) -> int:
    """submit / status / schedule: the engine's Target, through its real client library."""
    from engines.base import Connection, follow, get, print_status

    target = get(args.target)
    conn = Connection(
        host=args.host,
        namespace=args.namespace,
        subscription_id=args.subscription_id,
        resource_group=args.resource_group,
        workspace=args.workspace,
    )
    if args.command == "schedule":
        cfg = load_config(args.config, args.overrides)
        s = target.settings.model_validate((cfg.targets or {}).get(args.target) or {})
        cron = args.cron or s.schedule
        if not cron:
            raise UserError(f'schedule: no cron; pass --cron "0 3 * * 1" or set targets.{args.target}.schedule')
        from core.cron import parse as parse_cron

        try:
            parse_cron(cron, args.target)
        except ValueError as e:
            raise UserError(f"--cron: {e}") from None
        print(target.schedule(DAG, cfg, conn, cron, args.timezone or s.schedule_timezone))
        return 0
    if args.command == "submit":
        cfg = load_config(args.config, args.overrides)
        status = target.submit(DAG, cfg, conn)
        print(f"submitted {target.title} run {status.run_id}" + (f": {status.url}" if status.url else ""), flush=True)
    else:
        status = target.status(DAG, conn, args.run_id)
    if args.wait:
        status = follow(lambda: target.status(DAG, conn, status.run_id), status)
        print_status(status)
    elif args.command == "status":
        print_status(status)
    return 1 if status.state in ("failed", "canceled") and (args.wait or args.command == "status") else 0


def _import_olive(source: str, out: str, force: bool = False) -> int:
    """Write OUT: the comment header (every Olive key: mapped, or not imported and why), then our YAML."""
    from cli.olive import import_olive_config
    from core.config import load_config, read_config_file, validate

    path = Path(source)
    if not path.exists():
        raise UserError(f"Olive config not found: {source}")
    if path.suffix.lower() != ".json":
        raise UserError(f"{source}: an Olive config is a .json file")
    from core.outputs import claim, config_inputs

    if Path(out).suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"--out {out}: give a .yaml file, e.g. configs/{path.stem}.yaml")
    tree = read_config_file(path)  # one-line errors for a missing, binary or malformed file
    if not ("passes" in tree or "input_model" in tree):
        raise UserError(f"{source}: not an Olive config (it has neither input_model nor passes)")
    imp = import_olive_config(tree, path)
    cfg = validate(imp.tree, str(path))
    target = claim(out, inputs=config_inputs(path, cfg), force=force)
    target.write_text(imp.yaml())
    load_config(target)  # what was written loads as it is
    print(
        f"wrote {target}: {len(imp.mapped)} Olive keys mapped, {len(imp.ignored)} not imported (listed in its header)"
    )
    if imp.ignored:
        print(imp.warning(), file=sys.stderr)
    return 0


def _terminated(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _check_text_file(path: str) -> None:
    """``validate`` takes compiled YAML/JSON: say so for a binary file, not a decoder traceback."""
    p = Path(path)
    if not p.is_file():
        return  # a folder (AzureML) or a missing path: the validator says what it expects
    with open(p, "rb") as f:
        head = f.read(1 << 20)
    try:
        if b"\0" in head:
            raise UnicodeDecodeError("utf-8", head, head.index(b"\0"), head.index(b"\0") + 1, "NUL byte")
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and len(head) == 1 << 20:
            return
        raise UserError(
            f"{path}: not a text file (byte {head[e.start]:#x} at offset {e.start}); "
            "validate takes a compiled pipeline YAML or JSON file"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
