"""Run the DAG on this machine, one subprocess per stage, with content-hash caching.

Each stage gets exactly the argv its container gets (``StageSpec.argv``). A stage whose
cache key (code + parameters + input content + external files) matches its sealed output
is skipped. ``jobs`` steps run at once at most (``run --jobs N``), each as soon as its upstream
steps passed; after the first failure no step starts, and those running finish. Nothing
half-written is left behind, because stages seal their outputs themselves (``core.artifacts``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

from core import artifacts
from core.cache import cache_key
from core.config import Config, to_yaml
from core.errors import UserError
from core.hashing import ROOT
from core.io import load_file
from core.lineage import lineage
from core.runner import STEP_ENV
from core.spec import Pipeline, Step
from runtime import promotion


class Executor(Protocol):
    """How a stage runs: ``execute(step, argv, run_dir) -> exit code``, called from a worker thread,
    one call a running step; ``stop()`` ends the stages running now and starts none after it.
    :class:`Subprocesses` here; the docker runner passes its own."""

    def __call__(self, step: Step, argv: list[str], run_dir: Path) -> int: ...

    def stop(self) -> None: ...


def stage_argv(step: Step, cfg: Config, root: str) -> list[str]:
    """The stage's command line with artifacts under ``root``: what every target runs."""
    paths = artifact_paths_for(step, root)
    return step.spec.argv(step.params(cfg), paths["inputs"], paths["outputs"])


def artifact_paths_for(step: Step, root: str) -> dict[str, dict[str, str]]:
    return {
        "inputs": {name: "{}/{}/{}".format(root, *src) for name, src in step.wires.items()},
        "outputs": {p.name: f"{root}/{step.name}/{p.name}" for p in step.spec.outputs},
    }


class Subprocesses:
    """Each stage as a local process (:class:`Executor`).

    Ctrl-C reaches the whole foreground process group. A stage starts with SIGINT blocked
    (inherited from the thread that starts it, so it is blocked from fork on, even before the
    stage's Python starts) and gets SIGTERM from the runner instead, the signal it handles
    everywhere (cleanup; training checkpoints): one Ctrl-C gives one line per process, not a
    traceback from wherever each happened to be. The runner's worker threads block both
    signals, so the main thread takes them and calls :meth:`stop`; the lock makes a stage
    either start before ``stop`` (and get its SIGTERM) or not at all."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen] = {}
        self._stopping = False

    def __call__(self, step: Step, argv: list[str], run_dir: Path) -> int:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, STEP_ENV: step.name}
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self._lock:
            if self._stopping:
                return 128 + signal.SIGTERM
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
            signal.pthread_sigmask(signal.SIG_SETMASK, (mask - {signal.SIGTERM}) | {signal.SIGINT})  # the stage's
            try:
                proc = subprocess.Popen([sys.executable, *argv[1:]], env=env)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._running[step.name] = proc
        try:
            return proc.wait()
        finally:
            with self._lock:
                del self._running[step.name]

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for proc in self._running.values():
                proc.terminate()


def cached(step: Step, cfg: Config, run_dir: Path) -> bool:
    """True when every output is sealed with the key this step would compute now."""
    try:
        inputs = {
            name: artifacts.verify(run_dir.joinpath(*src), deep=False)["content_hash"]
            for name, src in step.wires.items()
        }
        key = cache_key(step.spec, step.params(cfg), inputs)
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
    execute: Executor | None = None,
    root: str | None = None,
    config_file: str | Path | None = None,
    jobs: int = 1,
) -> int:
    """Run every step, up to ``jobs`` at a time, each as soon as its upstream steps passed.
    ``execute``: how a stage runs (default: :class:`Subprocesses`); ``root``: the run folder as
    the stages see it (docker: /io); ``config_file``: the file the config came from, named in
    RUN_DIR/run.json (the report's identity)."""
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs {jobs}: give a whole number of stages to run at once, 1 or more")
    run_dir = Path(out).resolve()
    with run_lock(run_dir, out):
        summary: dict = {"pipeline": dag.name, "run_dir": str(run_dir), "stages": {}, "metrics": {}}
        summary["identity"] = run_identity(run_dir, config_file)
        run = LocalRun(dag, cfg, run_dir, summary, execute or Subprocesses(), root or str(run_dir), use_cache)
        try:
            return run.all(jobs)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the stages in flight were stopped; say so, then stop
            run.mark_interrupted()
            artifacts.write_json(run_dir / "summary.json", {**summary, "status": "interrupted"})
            raise


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
            raise UserError(
                f"--out {out} is in use by another run (pid {holder}); wait for it to finish, or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


class LocalRun:
    """One run of ``dag`` into ``run_dir``: which steps passed, which run, the first failure and the
    summary. The main thread decides everything (cache, outputs, order, summary); worker threads
    only wait on ``execute``."""

    def __init__(self, dag, cfg, run_dir, summary, execute, root, use_cache):
        self.dag, self.cfg, self.run_dir, self.summary = dag, cfg, run_dir, summary
        self.execute, self.root, self.use_cache = execute, root, use_cache
        self.status = 0  # the first failed step's exit code
        self.stopped: str | None = None  # why the DAG's condition ended the run early
        self.gated = dag.gated()
        self.pending = list(dag)  # not visited yet, in DAG order
        self.passed: set[str] = set()  # ran ok or cached
        self.visited: set[str] = set()
        self.running: dict[Future, tuple[Step, float, dict | None]] = {}  # -> step, start, output hashes before

    def all(self, jobs: int) -> int:
        self.prepare()
        self.schedule(jobs)
        self.summarise()
        return self.status

    def prepare(self) -> None:
        for step in self.dag:  # before anything runs: the run replaces only outputs it sealed
            for port in step.spec.outputs:
                artifacts.refuse_unowned(self.run_dir / step.name / port.name)
        (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))
        identity = self.summary["identity"]
        if not identity.get("config_file"):  # no file named: the resolved config this run wrote
            config = self.run_dir / "config.yaml"
            identity.update(config_file=str(config), config_sha256=file_sha256(config))
        artifacts.write_json(self.run_dir / RUN_JSON, identity)
        # promoted.json describes the run whose artifacts lie beside it: gone until this one passes.
        (self.run_dir / promotion.PROMOTED).unlink(missing_ok=True)
        (self.run_dir / "summary.json").unlink(missing_ok=True)  # likewise: it is rewritten when this run ends

    def schedule(self, jobs: int) -> None:
        """Start the ready steps while fewer than ``jobs`` run; take each one's result as it ends."""
        with ThreadPoolExecutor(jobs, thread_name_prefix="stage", initializer=_leave_signals_to_main) as pool:
            try:
                self.start_ready(pool, jobs)
                while self.running:
                    # a timeout, so that the main thread takes a signal soon wherever it landed
                    ended, _ = wait(self.running, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in [f for f in self.running if f in ended]:  # in the order they started
                        self.finish(future)
                    self.start_ready(pool, jobs)
            except BaseException as e:
                self.stop(interrupted=isinstance(e, KeyboardInterrupt))
                raise

    def start_ready(self, pool: ThreadPoolExecutor, jobs: int) -> None:
        """Visit the pending steps in DAG order: after a failure none starts; when the condition
        ended the run its steps are skipped; a step whose upstream steps passed starts."""
        for step in list(self.pending):
            if len(self.running) >= jobs:
                return
            if self.status:
                self.entry(step)
            elif self.stopped and step.name in self.gated:
                self.entry(step).update(status="skipped")
            elif step.upstream() <= self.passed:
                self.visit(step, pool)
            else:
                continue  # waits for an upstream step that runs now
            self.pending.remove(step)

    def visit(self, step: Step, pool: ThreadPoolExecutor) -> None:
        """Take ``step`` from the cache, or clear its outputs and start it."""
        entry = self.entry(step)
        self.visited.add(step.name)
        started = time.time()
        if self.use_cache and cached(step, self.cfg, self.run_dir):
            entry.update(status="ok", cached=True)
            print(f"==> {step.name}: cached (inputs, parameters and code unchanged)", flush=True)
            self.passed_condition(step)
            return
        # Outputs from another key are stale: never leave them where a good one belongs. The
        # steps downstream keep theirs only if this step's outputs come out byte-identical (a
        # parameter that changes no output, such as data.promoted_dataset_hash): their cache
        # keys, made of input contents, then still hold.
        before = _content_hashes(step, self.run_dir)
        for port in step.spec.outputs:
            artifacts.remove(self.run_dir / step.name / port.name)
        identity = self.summary["identity"]
        artifacts.write_json(self.run_dir / RUN_JSON, {**identity, "stages": self.stages()})  # timings so far
        argv = stage_argv(step, self.cfg, self.root)
        print(f"==> {step.name}: {' '.join(argv[:3])} ...", flush=True)
        future = pool.submit(self._execute, step, argv)
        self.running[future] = (step, started, before)

    def _execute(self, step: Step, argv: list[str]) -> tuple[int, float]:
        return self.execute(step, argv, self.run_dir), time.time()

    def finish(self, future: Future) -> None:
        """A started step ended: record it; if it failed or its outputs changed, the outputs
        downstream are stale (none of those steps can have started)."""
        step, started, before = self.running.pop(future)
        code, ended = future.result()
        entry = self.entry(step)
        entry.update(seconds=round(ended - started, 1))
        if code != 0 or before is None or _content_hashes(step, self.run_dir) != before:
            for name in self.dag.downstream(step.name):
                for port in self.dag[name].spec.outputs:
                    artifacts.remove(self.run_dir / name / port.name)
        if code != 0:
            entry.update(status="failed", exit_code=code)
            print(
                f"==> {step.name}: FAILED (exit {code}) after {entry['seconds']:.1f}s; stopping",
                file=sys.stderr,
                flush=True,
            )
            self.status = self.status or code
        else:
            entry.update(status="ok")
            print(f"==> {step.name}: ok in {entry['seconds']:.1f}s", flush=True)
            self.passed_condition(step)

    def passed_condition(self, step: Step) -> None:
        self.passed.add(step.name)
        why = condition_unmet(self.dag, step, self.run_dir)
        if why:
            self.stopped = why
            _say_stopped(why, step, self.dag)

    def stop(self, interrupted: bool) -> None:
        """The run ends early (a signal, or an error of the runner's own): stop the stages that
        run and wait for them, so that none runs on, or seals an output, after the runner exits."""
        if interrupted and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C or SIGTERM must not cut this short
                signal.signal(signum, signal.SIG_IGN)
        self.execute.stop()
        wait(self.running)

    def entry(self, step: Step) -> dict:
        return self.summary["stages"].setdefault(step.name, {"status": "not run", "seconds": 0.0, "cached": False})

    def stages(self) -> dict:
        """The stage entries in DAG order, whatever order the steps ran in."""
        found = self.summary["stages"]
        return {s.name: found[s.name] for s in self.dag if s.name in found}

    def mark_interrupted(self) -> None:
        for name in self.visited:
            if self.summary["stages"][name]["status"] == "not run":
                self.summary["stages"][name]["status"] = "interrupted"
        self.summary["stages"] = self.stages()

    def summarise(self) -> None:
        """summary.json: stages, metrics, report, status; promotion when every stage passed."""
        summary = self.summary
        summary["stages"] = self.stages()
        if not self.stopped:
            self.collect_metrics()
        self.find_report()
        summary["status"] = "failed" if self.status else ("skipped" if self.stopped else "ok")
        if self.stopped:
            summary["reason"] = self.stopped
        summary["promoted"] = False
        if not self.status and not self.stopped:
            record = promote(self.dag, self.cfg, self.run_dir, summary["metrics"])
            summary["promoted"] = bool(record)
        artifacts.write_json(self.run_dir / "summary.json", summary)
        print_summary(summary)

    def collect_metrics(self) -> None:
        for step in self.dag:
            state = self.summary["stages"].get(step.name, {}).get("status")
            for port in (p for p in step.spec.outputs if p.type == "Metrics"):
                metrics = self.run_dir / step.name / port.name / "metrics.json"
                rejected = self.run_dir / step.name / f"{port.name}.rejected.json"
                if metrics.is_file() and artifacts.read_marker(metrics.parent):
                    found = json.loads(metrics.read_text())
                elif state == "failed" and rejected.is_file():  # a failed gate: the numbers it measured
                    found = json.loads(rejected.read_text())
                else:
                    continue
                self.summary["metrics"].update(found.get("summary", {}))
                if "verdict" in found:
                    self.summary["gate"] = found["verdict"]

    def find_report(self) -> None:
        """evaluate's report.html (or, after a failed gate, the rejected one)."""
        for step in self.dag:
            state = self.summary["stages"].get(step.name, {}).get("status")
            for port in (p for p in step.spec.outputs if p.type == "Metrics"):
                page = f"{port.name}/report.html" if state == "ok" else f"{port.name}.rejected.html"
                if state in ("ok", "failed") and (self.run_dir / step.name / page).is_file():
                    self.summary["report"] = str(self.run_dir / step.name / page)


def _leave_signals_to_main() -> None:
    """A worker thread takes no SIGINT/SIGTERM: the kernel hands them to the main thread, which
    stops the run (Python runs signal handlers there only)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


RUN_JSON = "run.json"  # which run this is: evaluate's report shows it


def run_identity(run_dir: Path, config_file) -> dict:
    from datetime import datetime, timezone

    config = Path(config_file) if config_file else None
    return {
        "run_dir": str(run_dir),
        "config_file": str(config) if config else None,
        "config_sha256": file_sha256(config) if config and config.is_file() else None,
        "git": git_version(),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_version() -> str | None:
    """``<commit>`` of this checkout, ``+dirty`` with uncommitted changes; None outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def _content_hashes(step: Step, run_dir: Path) -> dict | None:
    """The content hash of each sealed output of ``step``; None if any is missing or unsealed."""
    out = {}
    for port in step.spec.outputs:
        marker = artifacts.read_marker(run_dir / step.name / port.name)
        if not marker:
            return None
        out[port.name] = marker.get("content_hash")
    return out


def _say_stopped(stopped: str | None, step: Step, dag: Pipeline) -> None:
    if stopped:
        print(
            f"==> {step.name}: {stopped}; skipping {', '.join(s.name for s in dag if s.name in dag.gated())}",
            flush=True,
        )


def condition_unmet(dag: Pipeline, step: Step, run_dir: Path) -> str | None:
    """After the DAG's condition step: None to go on, else why the rest is skipped (read from
    the output parameters in the step's seal, as an engine reads them from its outputs)."""
    c = dag.condition
    if c is None or step.name != c.step:
        return None
    params: dict = {}
    for port in step.spec.outputs:
        params.update((artifacts.read_marker(run_dir / step.name / port.name) or {}).get("parameters") or {})
    if params.get(c.param) == c.equals:
        return None
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{c.reason} ({shown or 'no output parameters'})"


def promote(dag: Pipeline, cfg: Config, run_dir: Path, metrics: dict) -> dict | None:
    """Every stage passed, the quality gate included: write ``RUN_DIR/promoted.json`` with the
    INT4 model's path and seal, the metrics and the lineage (``runtime/promotion.py``)."""
    seals = {
        (s.name, p.name): (p, artifacts.read_marker(run_dir / s.name / p.name)) for s in dag for p in s.spec.outputs
    }
    promoter = next((s for s in dag if promotion.promotes(s.spec)), None)
    if promoter is None:
        return None
    stage, port = promoter.wires[promotion.model_port(promoter.spec)]  # the model the gate passed
    model_seal = seals[(stage, port)][1]
    metrics_seal = next((seal for p, seal in seals.values() if p.type == "Metrics" and seal), None)
    if model_seal is None or metrics_seal is None:
        return None
    dataset = next((seal for p, seal in seals.values() if p.type == "Dataset" and seal), None) or {}
    chain = metrics_seal.get("lineage_params") or {s.chain_key: s.params(cfg) for s in dag}
    datasets = {
        s.task: (seals[(s.name, p.name)][1] or {}).get("content_hash")
        for s in dag
        if s.task
        for p in s.spec.outputs
        if p.type == "Dataset"
    }
    record = promotion.record(
        run_dir / stage / port,
        model_seal,
        metrics,
        lineage(chain, dataset.get("content_hash")),
        run_dir,
        cfg.name,
        chain,
        datasets,
    )
    promotion.write(run_dir / promotion.PROMOTED, record)
    print(
        f"==> promoted: {run_dir / stage / port} (dataset {str(dataset.get('content_hash'))[:12]}); "
        f"{run_dir / promotion.PROMOTED}",
        flush=True,
    )
    return record


def list_runs(root: Path) -> list[dict]:
    """The run folders under ``root`` (``root`` itself, its children and grandchildren that
    hold a summary.json), newest first, with status, when, how long, headline metrics and promotion."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root}: not a folder")
    found = [p.parent for pattern in ("summary.json", "*/summary.json", "*/*/summary.json") for p in root.glob(pattern)]
    rows = []
    for run in sorted(set(found), key=lambda p: _mtime(p / "summary.json"), reverse=True):
        ended = _mtime(run / "summary.json")  # written as the run ends
        try:
            summary = load_file(run / "summary.json")
            if not isinstance(summary, dict):
                raise UserError("not a mapping")
        except UserError:  # a FIFO, a huge or malformed file: listed, never waited on
            rows.append({"run": str(run), "status": "unreadable", "ended": ended})
            continue
        promoted = promotion.read(run)
        onnx = next(
            (v for k, v in summary.get("metrics", {}).items() if k.startswith("onnx") and isinstance(v, dict)), {}
        )
        stages = summary.get("stages") if isinstance(summary.get("stages"), dict) else {}
        seconds = [s.get("seconds") for s in stages.values() if isinstance(s, dict)]
        rows.append(
            {
                "run": str(run),
                "status": summary.get("status", "?"),
                "reason": summary.get("reason"),
                "ended": ended,
                # the stages' own run times; cached ones count 0
                "seconds": sum(x for x in seconds if isinstance(x, (int, float))) if seconds else None,
                "accuracy": onnx.get("accuracy"),
                "macro_f1": onnx.get("macro_f1"),
                # promoted.json (local runners), or the summary's flag (kfp-local: KFP's metadata)
                "promoted": bool(promoted) or summary.get("promoted") is True,
                "dataset_hash": (promoted or {}).get("lineage", {}).get("dataset_hash"),
            }
        )
    return rows


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # a link to nothing, a loop
        return 0.0


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def print_runs(rows: list[dict]) -> None:
    if not rows:
        print("no runs (no summary.json) found")
        return
    width = max(len("run"), *(len(r["run"]) for r in rows))
    print(f"{'run':<{width}}  {'ended':<16}  {'took':>7}  {'status':<11} {'INT4 acc':>8} {'INT4 F1':>8}  promoted")
    for r in rows:
        acc = f"{r['accuracy']:.3f}" if isinstance(r.get("accuracy"), (int, float)) else "-"
        f1 = f"{r['macro_f1']:.3f}" if isinstance(r.get("macro_f1"), (int, float)) else "-"
        ended = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["ended"])) if r.get("ended") else "-"
        promoted = (
            f"yes (dataset {r['dataset_hash'][:12]})"
            if r.get("promoted") and r.get("dataset_hash")
            else ("yes" if r.get("promoted") else "no")
        )
        line = (
            f"{r['run']:<{width}}  {ended:<16}  {_duration(r.get('seconds')):>7}  {r['status']:<11} "
            f"{acc:>8} {f1:>8}  {promoted}"
        )
        if r.get("reason"):
            line += f"  ({r['reason'][:60]})"
        print(line)


def print_summary(summary: dict) -> None:
    print(f"\n{'stage':<12} {'status':<8} {'cached':<7} {'seconds':>8}")
    for name, s in summary["stages"].items():
        print(f"{name:<12} {s['status']:<8} {str(s['cached']).lower():<7} {s['seconds']:>8.1f}")
    for model, m in summary["metrics"].items():
        if isinstance(m, dict) and "accuracy" in m:
            print(f"{model:<12} accuracy {m['accuracy']:.3f}  macro_f1 {m['macro_f1']:.3f}")
    reason = f": {summary['reason']}" if summary.get("reason") else ""
    if summary.get("report"):
        print(f"report: {summary['report']}")
    print(f"summary: {summary['run_dir']}/summary.json ({summary['status']}{reason})")


def print_stages(dag: Pipeline) -> None:
    """The registry as a table (inputs with the output they are wired to), each stage's
    parameters (its --set keys) on the line below."""
    import textwrap

    cfg = Config()
    rows = []
    for s in dag:
        spec = s.spec
        ins = ", ".join(f"{p.name}<-{s.wires[p.name]}" for p in spec.inputs) or "-"
        outs = ", ".join(f"{p.name}:{p.type}" for p in spec.outputs)
        gpu = spec.gpu.gpu if spec.gpu else 0
        rows.append(
            (spec.name, ins, outs, str(spec.cpu.cpu), f"{spec.cpu.memory_gb}G", str(gpu), list(spec.params(cfg)))
        )
    head = ("stage", "inputs", "outputs", "cpu", "mem", "gpu(cuda)")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:6], widths)).rstrip())
        params = "params: " + (", ".join(r[6]) or "-")
        print(textwrap.fill(params, width=110, initial_indent="    ", subsequent_indent="            "))
