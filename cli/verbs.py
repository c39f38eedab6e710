"""The command line's verbs as one table: a verb is its name, its arguments and its handler.

``pipeline.py`` builds the parser from :data:`VERBS` and hands each handler the parsed arguments and
the DAG. Arguments several verbs share (``--config``/``--set``, the cluster connection) are parent
parsers defined once here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

CONFIG_HELP = (
    "a YAML config (configs/*.yaml) or an Olive JSON config (imported as by import-olive); default: %(default)s"
)
SET_HELP = "override one config key, e.g. --set train.lora.r=8 (repeatable; the keys: pipeline.py run --help)"

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
    "tune-int4": """examples:
  python pipeline.py tune-int4 --run runs/default                   # the run's config, onnx.search defaults
  python pipeline.py tune-int4 --run runs/default --set onnx.search.block_sizes=[32,64] \\
      --set onnx.search.max_minutes=5""",
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


# ---------------------------------------------------------------------------------------------
# Arguments


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def config_parent() -> argparse.ArgumentParser:
    """--config and --set, as every verb that loads a config takes them."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", default="configs/default.yaml", help=CONFIG_HELP)
    add_set(p)
    return p


def connection_parent() -> argparse.ArgumentParser:
    """Where a cluster is: these flags or the engine's env vars. Credentials come only from the
    environment, a kube context or the Azure identity."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--target", choices=_engines(), required=True, help="the engine")
    p.add_argument(
        "--host",
        help="KFP: the API endpoint (else KF_PIPELINES_ENDPOINT, else the kube context); "
        "Argo: the Argo Server URL (else ARGO_SERVER)",
    )
    p.add_argument(
        "--namespace",
        help="Argo: the workflow namespace (else targets.argo.namespace, ARGO_NAMESPACE); "
        "KFP: the user namespace on multi-user installs",
    )
    p.add_argument("--subscription", dest="subscription_id", help="AzureML (else AZURE_SUBSCRIPTION_ID or config.json)")
    p.add_argument("--resource-group", dest="resource_group", help="AzureML (else AZURE_RESOURCE_GROUP or config.json)")
    p.add_argument("--workspace", help="AzureML (else AZUREML_WORKSPACE_NAME or config.json)")
    return p


PARENTS = {"config": config_parent, "connection": connection_parent}


def _engines() -> list[str]:
    from engines.base import names

    return names()


def _run_args(p) -> None:
    p.add_argument(
        "--out",
        required=True,
        help="run folder; artifacts go to OUT/<stage>/<output>/, OUT/summary.json and OUT/evaluate/metrics/report.html",
    )
    p.add_argument(
        "--runner",
        choices=["subprocess", "docker", "kfp-local"],
        default="subprocess",
        help="subprocess: each stage as a local process; docker: each stage in its image; "
        "kfp-local: the compiled KFP pipeline under KFP's own local orchestrator (DockerRunner)",
    )
    p.add_argument("--no-cache", action="store_true", help="re-run every stage")
    p.add_argument(
        "--jobs",
        type=_stage_count,
        default=1,
        metavar="N",
        help="subprocess and docker runners: run up to N independent stages at once, each as soon as "
        "its upstream stages passed (default 1: one at a time, in DAG order)",
    )


def _stage_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of stages to run at once, 1 or more")
    return int(text)


def _tune_args(p) -> None:
    p.add_argument("--run", required=True, help="a finished run folder (pipeline.py run --out RUN)")
    p.add_argument("--config", default=None, help="a YAML config; default: the run's own RUN/config.yaml")
    p.add_argument("--out", default=None, help="where the chosen model and search.json go; default: RUN/tune-int4")
    add_set(p)


def _compile_args(p) -> None:
    p.add_argument("--target", choices=_engines(), required=True, help="the engine")
    p.add_argument(
        "--out", required=True, help="kfp/argo: a .yaml file; azureml: a folder (pipeline.yml + components/)"
    )
    p.add_argument("--force", action="store_true", help="overwrite files an earlier compile wrote at --out")


def _validate_args(p) -> None:
    p.add_argument("path", metavar="PATH", help="what compile wrote: a .yaml file (kfp, argo) or a folder (azureml)")
    p.add_argument("--target", choices=_engines(), help="the engine (optional: guessed from the file)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="also fail (exit 2) when the images are in no registry a cluster can pull from (localhost/...)",
    )


def _submit_args(p) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the run to its end, one line per stage state change; exit non-zero if it failed",
    )


def _status_args(p) -> None:
    p.add_argument("run_id", metavar="RUN_ID", help="the run's id, as submit printed it (Argo: the Workflow name)")
    p.add_argument("--wait", action="store_true", help="follow the run to its end")


def _schedule_args(p) -> None:
    p.add_argument("--cron", help='a 5-field cron, e.g. "0 3 * * 1" (default: targets.<target>.schedule)')
    p.add_argument("--timezone", help="default: targets.<target>.schedule_timezone (UTC)")


def _import_args(p) -> None:
    p.add_argument("olive", metavar="OLIVE_JSON", help="the Olive config file")
    p.add_argument("--out", required=True, help="the YAML config to write, e.g. configs/<name>.yaml")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def _runs_args(p) -> None:
    p.add_argument("--root", default="runs", help="a run folder, or a folder of run folders (default: runs)")


# ---------------------------------------------------------------------------------------------
# Handlers: (parsed arguments, the DAG of a config: pipeline.dag_for) -> exit code


def dag_config(path, overrides, dags):
    """The config and the DAG it runs (``dags``: pipeline.py's ``dag_for``; a ``tasks:`` list fans out)."""
    from core.config import load_config

    cfg = load_config(path, overrides)
    return cfg, dags(cfg)


def run(args, dags) -> int:
    from core.outputs import claim, config_inputs

    if args.runner == "kfp-local" and args.jobs != 1:
        raise UserError(
            f"--jobs {args.jobs}: kfp-local runs its tasks one at a time (KFP's local orchestrator); "
            "use --runner subprocess or docker to run stages at once"
        )
    cfg, dag = dag_config(args.config, args.overrides, dags)
    claim(args.out, inputs=config_inputs(args.config, cfg), run=True)
    if args.runner == "kfp-local":
        from engines.kfp_local import run_pipeline as run_kfp_local

        return run_kfp_local(dag, cfg, args.out)
    if args.runner == "docker":
        from engines.docker import run_pipeline
    else:
        from engines.local import run_pipeline
    return run_pipeline(dag, cfg, args.out, use_cache=not args.no_cache, config_file=args.config, jobs=args.jobs)


def compile_(args, dags) -> int:
    from core.outputs import claim, config_inputs
    from engines.base import get

    cfg, dag = dag_config(args.config, args.overrides, dags)
    target = get(args.target)
    path = claim(
        args.out,
        inputs=config_inputs(args.config, cfg),
        folder=target.writes_folder,
        default_name=target.default_out,
        also=target.written(dag),
        force=args.force,
    )
    target.compile(dag, cfg, path)
    print(f"wrote {path}")
    _warn_local_images(cfg)
    return 0


def validate(args, dags) -> int:
    from engines.validate import validate_file

    _check_text_file(args.path)
    validate_file(args.path, args.target, strict=args.strict)
    print(f"{args.path}: valid")
    return 0


def stages(args, dags) -> int:
    from core.config import Config
    from engines.local import print_stages

    print_stages(dags(Config()))
    return 0


def runs(args, dags) -> int:
    from engines.local import list_runs, print_runs

    print_runs(list_runs(Path(args.root)))
    return 0


def import_olive(args, dags) -> int:
    return _import_olive(args.olive, args.out, args.force)


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


def tune_int4(args, dags) -> int:
    import logging

    from core.config import load_config
    from core.runner import _setup_runtime
    from stages.onnx_build.search import summary_line, table, tune

    run_config = Path(args.run) / "config.yaml"
    cfg = load_config(args.config or (run_config if run_config.is_file() else "configs/default.yaml"), args.overrides)
    logging.basicConfig(level=logging.INFO, format="[tune-int4] %(message)s", stream=sys.stderr)
    _setup_runtime(cfg.runtime)
    found = tune(cfg, Path(args.run), args.out and Path(args.out))
    print(table(found["result"]))
    print(f"chosen: {found['chosen']['name']} ({summary_line(found['result'])})")
    print(f"model: {found['out'] / 'model'}; front: {found['out'] / 'search.json'}")
    return 0


def cluster(args, dags) -> int:
    """submit / status / schedule: the engine's Target, through its real client library."""
    from engines.base import Connection, follow, get, print_status
    from engines.compile_common import settings

    target = get(args.target)
    conn = Connection(
        host=args.host,
        namespace=args.namespace,
        subscription_id=args.subscription_id,
        resource_group=args.resource_group,
        workspace=args.workspace,
    )
    if args.command == "schedule":
        cfg, dag = dag_config(args.config, args.overrides, dags)
        s = settings(cfg, args.target)
        cron = args.cron or s.schedule
        if not cron:
            raise UserError(f'schedule: no cron; pass --cron "0 3 * * 1" or set targets.{args.target}.schedule')
        from core.cron import parse as parse_cron

        try:
            parse_cron(cron, args.target)
        except ValueError as e:
            raise UserError(f"--cron: {e}") from None
        print(target.schedule(dag, cfg, conn, cron, args.timezone or s.schedule_timezone))
        return 0
    if args.command == "submit":
        cfg, dag = dag_config(args.config, args.overrides, dags)
        status = target.submit(dag, cfg, conn)
        print(f"submitted {target.title} run {status.run_id}" + (f": {status.url}" if status.url else ""), flush=True)
    else:
        from core.config import Config

        dag = dags(Config())  # the run's own steps come from the engine: status lists what it reports
        status = target.status(dag, conn, args.run_id)
    if args.wait:
        status = follow(lambda: target.status(dag, conn, status.run_id), status)
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


# ---------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Verb:
    name: str
    help: str  # one line; also the verb's --help description unless ``description`` is given
    handler: Callable[[argparse.Namespace, object], int]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
    parents: tuple[str, ...] = ()  # keys of PARENTS
    epilog: Callable[[], str] | None = None
    description: str | None = None


IMPORT_OLIVE_DESCRIPTION = """Convert an Olive config into our YAML, with both generations of its keys: the Phi-3
CookBook's older PyTorchModel/params_config/lora_r keys and the current
HfModel/load_dataset_config/r keys. The written file starts with a comment header listing
every Olive key: what it was mapped to, and what was not imported and why. Relative data
paths resolve against the Olive file's folder, as in Olive. `run --config olive.json` and
`compile --config olive.json` use the same import."""


def _example(name: str) -> Callable[[], str]:
    return lambda: EXAMPLES[name]


VERBS = (
    Verb("run", "run the DAG on this machine", run, _run_args, ("config",), _run_epilog),
    Verb(
        "tune-int4",
        "search the INT4 recipe for a finished run's merged model (onnx.search; prints the Pareto front)",
        tune_int4,
        _tune_args,
        epilog=_example("tune-int4"),
    ),
    Verb("compile", "compile the DAG for a cluster engine", compile_, _compile_args, ("config",), _example("compile")),
    Verb(
        "validate",
        "check a compiled file strictly, references included",
        validate,
        _validate_args,
        (),
        _example("validate"),
    ),
    Verb(
        "submit",
        "submit a run to a cluster engine",
        cluster,
        _submit_args,
        ("connection", "config"),
        _example("submit"),
    ),
    Verb("status", "the stage table of a submitted run", cluster, _status_args, ("connection",), _example("status")),
    Verb(
        "schedule",
        "retrain on a cron schedule on a cluster engine",
        cluster,
        _schedule_args,
        ("connection", "config"),
        _example("schedule"),
    ),
    Verb(
        "import-olive",
        "convert a Microsoft Olive JSON config into a config of ours",
        import_olive,
        _import_args,
        epilog=_example("import-olive"),
        description=IMPORT_OLIVE_DESCRIPTION,
    ),
    Verb(
        "stages", "print the stage registry: inputs, outputs, parameters, resources", stages, epilog=_example("stages")
    ),
    Verb(
        "runs", "list local runs: status, metrics, promotion (promoted.json)", runs, _runs_args, epilog=_example("runs")
    ),
)


def add_verbs(parser: argparse.ArgumentParser, debug: argparse.ArgumentParser) -> None:
    """One subparser a verb: the shared parents first, then the verb's own arguments."""
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        p = sub.add_parser(
            verb.name,
            parents=[debug, *(PARENTS[name]() for name in verb.parents)],
            help=verb.help,
            description=verb.description or verb.help[0].upper() + verb.help[1:] + ".",
            epilog=verb.epilog() if verb.epilog else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        verb.arguments(p)
        p.set_defaults(handler=verb.handler)
