"""Run the compiled KFP pipeline on this machine with KFP's own orchestrator (``kfp.local``).

    python pipeline.py run --runner kfp-local --config C --out RUN_DIR

KFP semantics without a cluster: the file that ``compile --target kfp`` writes is loaded with
``kfp.components.load_component_from_file`` and executed by ``kfp.local`` with its
``DockerRunner``, one container per task on the stage images (``make images``). KFP's code,
not ours, resolves the placeholders, passes the artifacts, applies the retry policy and
reads each task's executor output.

- ``RUN_DIR/pipeline.yaml``: the compiled pipeline; ``RUN_DIR/pipeline_root/``: KFP's
  artifacts (``<pipeline>-<time>/<task>/<output>``); ``RUN_DIR/summary.json``: the same shape
  as the subprocess runner's.
- Local files the config names (``data.path``, a local ``model.base`` ...) are copied under
  the pipeline root, the only host folder ``DockerRunner`` mounts, and the config is pointed
  at the copies. The model cache and train checkpoints live there too
  (``SLM_CHECKPOINT_DIR``), so a retried train task resumes where the failed one stopped.
- Containers run as the images' non-root user (10001) when this process is root, else as
  your uid; the pipeline root is made writable for that user. No network.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from core import artifacts
from core.config import Config
from core.spec import Pipeline

from .compile_common import k8s_name
from .docker import chown_tree, run_user


def _localize_inputs(dag: Pipeline, cfg: Config, inputs_dir: Path) -> Config:
    """Copy the host files the config names under ``inputs_dir``; point the config at them (a task's
    files where its task names them)."""
    from core.tasks import task_owned

    tree = cfg.model_dump(mode="json")
    done: set[tuple] = set()
    for step in dag:
        params = step.params(cfg)
        for key in step.spec.external_keys(params):
            owner = step.task if step.task is not None and task_owned(key) else None
            value = params.get(key)
            if not isinstance(value, str) or (owner, key) in done or ":" in value.split("/")[0]:
                continue  # unset, done, or a built-in source (embedded:..., tiny-random:...)
            host = Path(value).expanduser()
            if not host.exists():
                continue  # a hub id; the stage reports a missing file itself
            target = inputs_dir / (owner or "") / key / host.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if host.is_dir():
                shutil.copytree(host, target, dirs_exist_ok=True)
            else:
                shutil.copy2(host, target)
            node = next(t for t in tree["tasks"] if t["name"] == owner) if owner else tree
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = str(target)
            done.add((owner, key))
    return Config.model_validate(tree)


def run_pipeline(dag: Pipeline, cfg: Config, out: str | Path, env: dict[str, str] | None = None) -> int:
    """Compile ``dag`` for KFP, run it under ``kfp.local.DockerRunner``; write summary.json."""
    from kfp import components, local

    from . import kfp

    run_dir = Path(out).resolve()
    root = run_dir / "pipeline_root"
    cache = root / ".cache"
    for folder in (root, cache):
        folder.mkdir(parents=True, exist_ok=True)
    cfg = _localize_inputs(dag, cfg, root / "inputs")
    spec_path = kfp.compile_pipeline(dag, cfg, run_dir / "pipeline.yaml")
    uid, gid = run_user()
    if os.getuid() == 0:
        chown_tree(root, uid, gid)

    runner_env = {
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",  # no network: fail fast on a hub id instead of retrying
        "HF_HOME": str(cache / "huggingface"),
        "SLM_CACHE_DIR": str(cache / "slm"),
        "SLM_CHECKPOINT_DIR": str(cache / "checkpoints"),
        # the reliability tests' fault injection (core/faults.py) reaches the tasks
        **{k: v for k, v in os.environ.items() if k.startswith("SLM_FAULT")},
        **(env or {}),
    }
    # Kubernetes' `command` replaces the image's ENTRYPOINT; docker's replaces only CMD. Clear
    # the entry point so that a task runs exactly its compiled command, as in a pod.
    run_args: dict = dict(user=f"{uid}:{gid}", network_mode="none", environment=runner_env, entrypoint=[""])
    if any(step.spec.uses_gpu(cfg) for step in dag):
        from docker.types import DeviceRequest

        run_args["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    _check_images(dag, cfg)
    local.init(runner=local.DockerRunner(**run_args), pipeline_root=str(root), raise_on_error=False)
    pipeline = components.load_component_from_file(str(spec_path))
    started = time.time()
    before = {p.name for p in root.iterdir()}
    print(f"==> kfp.local: {spec_path} with DockerRunner (user {uid}:{gid}, no network)", flush=True)
    try:
        pipeline()
    except RuntimeError as e:  # kfp.local reports a failed task this way
        print(f"==> kfp.local: {e}", flush=True)
    runs = sorted((p for p in root.iterdir() if p.name not in before and p.is_dir()), key=lambda p: p.stat().st_mtime)
    summary = summarize(dag, runs[-1] if runs else None, run_dir, time.time() - started)
    from runtime.kfp_output import REPORT_SUFFIX

    pages = sorted(p for p in runs[-1].rglob(f"*{REPORT_SUFFIX}") if p.is_file()) if runs else []
    if pages:  # evaluate's report.html, as the KFP HTML artifact
        summary["report"] = str(pages[-1])
    artifacts.write_json(run_dir / "summary.json", summary)
    from .local import print_summary

    print_summary(summary)
    return 0 if summary["status"] in ("ok", "skipped") else 1


def summarize(dag: Pipeline, kfp_run: Path | None, run_dir: Path, seconds: float) -> dict:
    """The subprocess runner's summary shape, read from what the KFP tasks left behind
    (``kfp_run`` None: the first task failed before it wrote anything)."""
    summary: dict = {
        "pipeline": dag.name,
        "run_dir": str(run_dir),
        "kfp_run": str(kfp_run or ""),
        "stages": {},
        "metrics": {},
    }
    status = "ok"
    stopped = None  # the DAG's condition was false: KFP's dsl.If skipped the steps behind it
    promoted = False
    for i, step in enumerate(dag):
        if stopped and step.name in dag.gated():
            summary["stages"][step.name] = {"status": "skipped", "cached": False, "seconds": 0.0}
            continue
        if kfp_run is None:
            summary["stages"][step.name] = {
                "status": "failed" if i == 0 else "not run",
                "cached": False,
                "seconds": 0.0,
            }
            status = "failed"
            continue
        task = kfp_run / k8s_name(step.name)
        markers = [artifacts.read_marker(task / p.name) for p in step.spec.outputs]
        ok = (task / "executor_output.json").is_file() and all(markers)
        entry = {
            "status": "ok" if ok else ("failed" if task.exists() else "not run"),
            "cached": False,
            "seconds": max((m or {}).get("seconds", 0.0) for m in markers) if ok else 0.0,
            "outputs": {p.name: str(task / p.name) for p in step.spec.outputs},
        }
        summary["stages"][step.name] = entry
        if not ok:
            status = "failed"
            continue
        executor_output = json.loads((task / "executor_output.json").read_text())
        c = dag.condition
        if c and step.name == c.step:
            values = executor_output.get("parameterValues", {})
            if values.get(c.param) != c.equals:
                stopped = f"{c.reason} ({', '.join(f'{k}={v}' for k, v in values.items())})"
        for port in step.spec.outputs:
            metrics = task / port.name / "metrics.json"
            if port.type == "Metrics" and metrics.is_file():
                summary["metrics"].update(json.loads(metrics.read_text()).get("summary", {}))
                listed = executor_output.get("artifacts", {}).get(port.name, {}).get("artifacts") or [{}]
                promoted = promoted or bool(listed[0].get("metadata", {}).get("promoted"))
    summary["status"] = "skipped" if (stopped and status == "ok") else status
    if stopped:
        summary["reason"] = stopped
    summary["promoted"] = promoted and status == "ok" and not stopped
    summary["seconds"] = round(seconds, 1)
    return summary


def _check_images(dag: Pipeline, cfg: Config) -> None:
    """Every stage image is built from this checkout (the docker runner's own check)."""
    from .docker import DockerExecutor
    from .images import connect

    DockerExecutor(connect(), dag, cfg).check_images(dag)
