"""Run the DAG on this machine, one subprocess per stage, with content-hash caching.

Each stage gets exactly the argv its container gets (``StageSpec.argv``). A stage whose
cache key (code + parameters + input content + external files) matches its sealed output
is skipped. The first failure stops the run; nothing half-written is left behind, because
stages seal their outputs themselves (``components.common.artifacts``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from components.common import artifacts
from components.common.config import Config, to_yaml
from components.common.errors import UserError
from components.common.harness import cache_key
from components.common.hashing import ROOT
from components.registry import Pipeline, Step

# execute(step, argv, run_dir) -> exit code. The docker runner passes its own.
Executor = Callable[[Step, list, Path], int]


def stage_argv(step: Step, cfg: Config, root: str) -> list[str]:
    """The stage's command line with artifacts under ``root``: what every target runs."""
    paths = artifact_paths_for(step, root)
    return step.spec.argv(step.spec.params(cfg), paths["inputs"], paths["outputs"])


def artifact_paths_for(step: Step, root: str) -> dict[str, dict[str, str]]:
    return {
        "inputs": {name: "{}/{}/{}".format(root, *src.split(".")) for name, src in step.wires.items()},
        "outputs": {p.name: f"{root}/{step.name}/{p.name}" for p in step.spec.outputs},
    }


def run_subprocess(step: Step, argv: list[str], run_dir: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Ctrl-C reaches the whole foreground process group: the stage ignores SIGINT and gets SIGTERM
    # from us instead, the signal it handles everywhere (cleanup; training checkpoints), so one
    # Ctrl-C gives one line per process, not a traceback from wherever each happened to be.
    proc = subprocess.Popen([sys.executable, *argv[1:]], env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        return proc.wait()
    except BaseException:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        proc.terminate()
        proc.wait()
        raise


def cached(step: Step, cfg: Config, run_dir: Path) -> bool:
    """True when every output is sealed with the key this step would compute now."""
    try:
        inputs = {
            name: artifacts.verify(run_dir.joinpath(*src.split(".")), deep=False)["content_hash"]
            for name, src in step.wires.items()
        }
        key = cache_key(step.spec, step.spec.params(cfg), inputs)
        for port in step.spec.outputs:
            marker = artifacts.verify(run_dir / step.name / port.name, port.type)
            if marker.get("cache_key") != key:
                return False
        return True
    except UserError:
        return False


def run_pipeline(
    dag: Pipeline,
    cfg: Config,
    out: str | Path,
    use_cache: bool = True,
    execute: Executor = run_subprocess,
    root: str | None = None,
) -> int:
    """Run every step in order. ``root`` is the run folder as the stages see it (docker: /io)."""
    run_dir = Path(out).resolve()
    with run_lock(run_dir, out):
        return _run_locked(dag, cfg, run_dir, use_cache, execute, root)


LOCK = ".run.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, out) -> None:
    """One run per run folder: a second one refuses, so summary.json always describes the run
    that wrote the artifacts beside it. ``flock`` is released by the kernel if the run dies."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose a folder for the run")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(run_dir / LOCK, "a+")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a writable folder") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise UserError(f"--out {out} is in use by another run (pid {holder}); wait for it to finish, "
                            "or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def _run_locked(dag: Pipeline, cfg: Config, run_dir: Path, use_cache: bool, execute: Executor, root: str | None) -> int:
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    summary: dict = {"pipeline": dag.name, "run_dir": str(run_dir), "stages": {}, "metrics": {}}
    status = 0
    for step in dag:
        entry = summary["stages"].setdefault(step.name, {"status": "not run", "seconds": 0.0, "cached": False})
        if status:
            continue
        started = time.time()
        if use_cache and cached(step, cfg, run_dir):
            entry.update(status="ok", cached=True)
            print(f"==> {step.name}: cached (inputs, parameters and code unchanged)", flush=True)
            continue
        # Outputs from another key are stale: never leave them where a good one belongs.
        for name in {step.name} | dag.downstream(step.name):
            for port in dag[name].spec.outputs:
                shutil.rmtree(run_dir / name / port.name, ignore_errors=True)
        argv = stage_argv(step, cfg, root or str(run_dir))
        print(f"==> {step.name}: {' '.join(argv[:3])} ...", flush=True)
        code = execute(step, argv, run_dir)
        entry.update(seconds=round(time.time() - started, 1))
        if code != 0:
            entry.update(status="failed", exit_code=code)
            print(f"==> {step.name}: FAILED (exit {code}); stopping", file=sys.stderr, flush=True)
            status = code
        else:
            entry.update(status="ok")
    for step in dag:
        for port in step.spec.outputs:
            metrics = run_dir / step.name / port.name / "metrics.json"
            if port.type == "Metrics" and metrics.is_file() and artifacts.read_marker(metrics.parent):
                summary["metrics"].update(json.loads(metrics.read_text()).get("summary", {}))
    summary["status"] = "failed" if status else "ok"
    artifacts.write_json(run_dir / "summary.json", summary)
    print_summary(summary)
    return status


def print_summary(summary: dict) -> None:
    print(f"\n{'stage':<12} {'status':<8} {'cached':<7} {'seconds':>8}")
    for name, s in summary["stages"].items():
        print(f"{name:<12} {s['status']:<8} {str(s['cached']).lower():<7} {s['seconds']:>8.1f}")
    for model, m in summary["metrics"].items():
        if isinstance(m, dict) and "accuracy" in m:
            print(f"{model:<12} accuracy {m['accuracy']:.3f}  macro_f1 {m['macro_f1']:.3f}")
    print(f"summary: {summary['run_dir']}/summary.json ({summary['status']})")


def print_stages(dag: Pipeline) -> None:
    cfg = Config()
    for s in dag:
        spec = s.spec
        ins = ", ".join(f"{p.name}:{p.type}<-{s.wires[p.name]}" for p in spec.inputs) or "-"
        outs = ", ".join(f"{p.name}:{p.type}" for p in spec.outputs)
        print(f"{spec.name:<11} in [{ins}] out [{outs}] params {len(spec.params(cfg))} "
              f"cpu {spec.cpu.cpu} mem {spec.cpu.memory_gb}G gpu(cuda) {spec.gpu.gpu if spec.gpu else 0}")
