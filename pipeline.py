#!/usr/bin/env python
"""Fine-tune a small language model into an evaluated INT4 ONNX model.

    data_prep ──► train ──► merge ──► onnx_build ──► evaluate
        └───────────────────────┴──────────────────────┘ (dataset, merged model)

The DAG below is the only place the wiring is written. Every target (local subprocesses,
docker, Kubeflow Pipelines, AzureML, Argo) is an adapter in ``targets/`` over it and over
the stage registry in ``components/registry.py``.

    python pipeline.py run      --config configs/default.yaml --out runs/default [--set k=v ...]
    python pipeline.py compile  --target kfp|azureml|argo --config C --out PATH
    python pipeline.py validate --target kfp|azureml|argo PATH
    python pipeline.py submit   --target kfp|azureml|argo --config C [--set k=v ...] [--wait]
    python pipeline.py status   --target kfp|azureml|argo RUN_ID [--wait]
    python pipeline.py schedule --target kfp|azureml|argo --config C [--cron "0 3 * * 1"]
    python pipeline.py stages   (the registry, as a table)
    python pipeline.py runs     [--root runs]   (local runs: status, metrics, promoted or not)

The engines are the registry of targets/base.py: one module per engine defines its Target.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from components.common.errors import UserError
from components.registry import Condition, Pipeline, step

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
    condition=Condition(step="data_prep", param="changed", equals="true",
                        reason="dataset unchanged since the promoted model"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks (here and in the stages) instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    # --debug also works after the command: `pipeline.py run --debug ...`
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, parents=(), **k: _add_parser(*a, parents=[debug, *parents], **k)

    run = sub.add_parser("run", help="run the DAG on this machine")
    run.add_argument("--config", default="configs/default.yaml")
    run.add_argument("--out", required=True, help="run folder; artifacts go to OUT/<stage>/<output>/")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--runner", choices=["subprocess", "docker", "kfp-local"], default="subprocess",
                     help="subprocess: each stage as a local process; docker: each stage in its image; "
                     "kfp-local: the compiled KFP pipeline under KFP's own local orchestrator (DockerRunner)")
    run.add_argument("--no-cache", action="store_true", help="re-run every stage")

    from targets.base import names as target_names

    engines = target_names()
    comp = sub.add_parser("compile", help="compile the DAG for a cluster engine")
    comp.add_argument("--target", choices=engines, required=True)
    comp.add_argument("--config", default="configs/default.yaml")
    comp.add_argument("--out", required=True)
    comp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    val = sub.add_parser("validate", help="check a compiled file strictly, references included")
    val.add_argument("path")
    val.add_argument("--target", choices=engines, help="default: guessed from the file")

    # Talking to a cluster. Where it is comes from these flags or the engine's env vars;
    # credentials only from the environment, a kube context or the Azure identity.
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--target", choices=engines, required=True)
    conn.add_argument("--host", help="KFP: the API endpoint (else KF_PIPELINES_ENDPOINT, else the kube context); "
                      "Argo: the Argo Server URL (else ARGO_SERVER)")
    conn.add_argument("--namespace", help="Argo: the workflow namespace (else targets.argo.namespace, ARGO_NAMESPACE); "
                      "KFP: the user namespace on multi-user installs")
    conn.add_argument("--subscription", dest="subscription_id", help="AzureML (else AZURE_SUBSCRIPTION_ID or config.json)")
    conn.add_argument("--resource-group", dest="resource_group", help="AzureML (else AZURE_RESOURCE_GROUP or config.json)")
    conn.add_argument("--workspace", help="AzureML (else AZUREML_WORKSPACE_NAME or config.json)")
    cfg_args = argparse.ArgumentParser(add_help=False)
    cfg_args.add_argument("--config", default="configs/default.yaml")
    cfg_args.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    subm = sub.add_parser("submit", parents=[conn, cfg_args], help="submit a run to a cluster engine")
    subm.add_argument("--wait", action="store_true", help="follow the run to its end, one line per stage state "
                      "change; exit non-zero if it failed")
    stat = sub.add_parser("status", parents=[conn], help="the stage table of a submitted run")
    stat.add_argument("run_id", metavar="RUN_ID")
    stat.add_argument("--wait", action="store_true", help="follow the run to its end")
    sched = sub.add_parser("schedule", parents=[conn, cfg_args], help="retrain on a cron schedule on a cluster engine")
    sched.add_argument("--cron", help='a 5-field cron, e.g. "0 3 * * 1" (default: targets.<target>.schedule)')
    sched.add_argument("--timezone", help="default: targets.<target>.schedule_timezone (UTC)")

    imp = sub.add_parser("import-olive", help="convert a Microsoft Olive JSON config into a config of ours",
                         description="Convert an Olive config (both generations of its keys: the Phi-3 CookBook's "
                         "older PyTorchModel/params_config/lora_r keys and the current HfModel/load_dataset_config/r "
                         "keys) into our YAML. The written file starts with a comment header listing every Olive key: "
                         "what it was mapped to, and what was not imported and why. Relative data paths resolve "
                         "against the Olive file's folder, as in Olive. `run --config olive.json` and "
                         "`compile --config olive.json` use the same import.",
                         epilog="example:\n  python pipeline.py import-olive olive-config.json --out configs/phi3-tone.yaml\n"
                         "  python pipeline.py run --config configs/phi3-tone.yaml --out runs/phi3-tone",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("olive", metavar="OLIVE_JSON", help="the Olive config file")
    imp.add_argument("--out", required=True, help="the YAML config to write, e.g. configs/<name>.yaml")

    sub.add_parser("stages", help="print the stage registry")

    runs = sub.add_parser("runs", help="list local runs: status, metrics, promotion (promoted.json)")
    runs.add_argument("--root", default="runs", help="a run folder, or a folder of run folders (default: runs)")

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
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted; the stage in flight was stopped and left no output (training keeps its last "
              "checkpoint): re-run the same command to continue", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    from components.common.config import load_config

    if args.command == "stages":
        from targets.local import print_stages

        print_stages(DAG)
        return 0
    if args.command == "import-olive":
        return _import_olive(args.olive, args.out)
    if args.command == "runs":
        from targets.local import list_runs, print_runs

        print_runs(list_runs(Path(args.root)))
        return 0
    if args.command == "run":
        cfg = load_config(args.config, args.overrides)
        if args.runner == "kfp-local":
            from targets.kfp_local import run_pipeline as run_kfp_local

            return run_kfp_local(DAG, cfg, args.out)
        if args.runner == "docker":
            from targets.docker import run_pipeline
        else:
            from targets.local import run_pipeline
        return run_pipeline(DAG, cfg, args.out, use_cache=not args.no_cache)
    if args.command == "compile":
        from targets.base import get

        cfg = load_config(args.config, args.overrides)
        get(args.target).compile(DAG, cfg, args.out)
        print(f"wrote {args.out}")
        return 0
    if args.command in ("submit", "status", "schedule"):
        return _cluster(args, load_config)
    if args.command == "validate":
        from targets.validate import validate_file

        _check_text_file(args.path)
        validate_file(args.path, args.target)
        print(f"{args.path}: valid")
        return 0
    return 2


def _cluster(args, load_config) -> int:
    """submit / status / schedule: the engine's Target, through its real client library."""
    from targets.base import Connection, follow, get, print_status

    target = get(args.target)
    conn = Connection(host=args.host, namespace=args.namespace, subscription_id=args.subscription_id,
                      resource_group=args.resource_group, workspace=args.workspace)
    if args.command == "schedule":
        cfg = load_config(args.config, args.overrides)
        s = target.settings.model_validate((cfg.targets or {}).get(args.target) or {})
        cron = args.cron or s.schedule
        if not cron:
            raise UserError(f'schedule: no cron; pass --cron "0 3 * * 1" or set targets.{args.target}.schedule')
        from targets.compile_common import cron_fields

        try:
            cron_fields(cron)
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


def _import_olive(source: str, out: str) -> int:
    """Write OUT: the comment header (every Olive key: mapped, or not imported and why), then our YAML."""
    from components.common.config import load_config, read_config_file, validate
    from components.common.olive import import_olive_config

    path = Path(source)
    if not path.exists():
        raise UserError(f"Olive config not found: {source}")
    if path.suffix.lower() != ".json":
        raise UserError(f"{source}: an Olive config is a .json file")
    target = Path(out)
    if target.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"--out {out}: give a .yaml file, e.g. configs/{path.stem}.yaml")
    tree = read_config_file(path)  # one-line errors for a missing, binary or malformed file
    if not ("passes" in tree or "input_model" in tree):
        raise UserError(f"{source}: not an Olive config (it has neither input_model nor passes)")
    imp = import_olive_config(tree, path)
    validate(imp.tree, str(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(imp.yaml())
    load_config(target)  # what was written loads as it is
    print(f"wrote {target}: {len(imp.mapped)} Olive keys mapped, {len(imp.ignored)} not imported (listed in its header)")
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
        raise UserError(f"{path}: not a text file (byte {head[e.start]:#x} at offset {e.start}); "
                        "validate takes a compiled pipeline YAML or JSON file") from None


if __name__ == "__main__":
    sys.exit(main())
