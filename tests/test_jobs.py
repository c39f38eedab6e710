"""``pipeline.py run --jobs N`` on the two-task DAG (its tasks' branches are independent): up to N
steps run at once, each as soon as its upstream steps passed; after the first failure no step
starts and the running ones finish; Ctrl-C stops every running stage. ``--jobs 1``, the default,
is what the rest of the suite runs (tests/test_pipeline.py, tests/reliability/)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, run_cli
from multi_tasks import multi_config, write_config

from core.artifacts import read_marker
from core.spec import step_name
from pipeline import TASKS_DAG

DAG = TASKS_DAG.expand(("tone", "sentiment"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _timeline(stdout: str) -> tuple[dict[str, int], dict[str, int]]:
    """The runner's own lines: where each step was started and where it ended."""
    started, ended = {}, {}
    for i, line in enumerate(stdout.splitlines()):
        for step in DAG:
            if line.startswith(f"==> {step.name}: python -m "):
                started[step.name] = i
            elif line.startswith((f"==> {step.name}: ok in ", f"==> {step.name}: FAILED")):
                ended[step.name] = i
    return started, ended


def _window(run: Path, step: str) -> tuple[float, float]:
    """When the stage worked, by its own clock: the seal's finish time less the seconds it took."""
    seal = next(read_marker(d) for d in (run / step).iterdir() if d.is_dir() and read_marker(d))
    return seal["finished_at"] - seal["seconds"], seal["finished_at"]


def test_two_jobs_run_the_tasks_branches_at_once(multi):
    """The session's two-task run is made with --jobs 2 (tests/multi_tasks.py)."""
    started, ended = _timeline(multi["stdout"])
    assert set(started) == set(ended) == {s.name for s in DAG}, multi["stdout"][-3000:]
    # both data_preps were started before either ended
    preps = [step_name("data_prep", t) for t in ("tone", "sentiment")]
    assert max(started[p] for p in preps) < min(ended[p] for p in preps)
    # ... and the two trains did work at the same time, by the stages' own clocks (at --jobs 1 one
    # stage seals and exits before the next one starts, so the windows cannot overlap)
    (tone_start, tone_end), (sent_start, sent_end) = (
        _window(multi["run"], step_name("train", t)) for t in ("tone", "sentiment")
    )
    assert max(tone_start, sent_start) < min(tone_end, sent_end), (tone_start, tone_end, sent_start, sent_end)
    # never more than 2 at once, and each step started after all of its upstream steps ended
    events = sorted([(i, +1) for i in started.values()] + [(i, -1) for i in ended.values()])
    running = [sum(d for _, d in events[: k + 1]) for k in range(len(events))]
    assert max(running) == 2
    for step in DAG:
        assert all(ended[up] < started[step.name] for up in step.upstream()), step.name


def _run(config: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipeline.py"), "run", "--config", str(config), "--out", str(out), *args]


def test_after_a_failure_no_step_starts_and_the_running_ones_finish(tmp_path):
    cfg = multi_config(tmp_path)
    cfg["train"].update(max_steps=2, checkpoint_every=2, log_every=1)
    bad = tmp_path / "no-label.jsonl"  # the sentiment task's label column is missing: its data_prep fails
    bad.write_text("".join(json.dumps({"text": f"The food was fine {i}."}) + "\n" for i in range(40)))
    cfg["tasks"][1]["data"]["path"] = str(bad)
    out = tmp_path / "run"
    proc = subprocess.run(  # stderr (the FAILED line) and stdout in the order they were written
        _run(write_config(tmp_path, cfg), out, "--jobs", "2"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and list(summary["stages"]) == [s.name for s in DAG]
    stages = summary["stages"]
    assert stages["data_prep_sentiment"]["status"] == "failed"
    assert stages["data_prep_tone"]["status"] == "ok"  # started with it, and finished
    started, ended = _timeline(proc.stdout)
    failed_at = ended["data_prep_sentiment"]
    assert all(i < failed_at for i in started.values()), proc.stdout[-3000:]  # nothing started after it
    for name, entry in stages.items():
        if name in started:  # ran to its end (train_tone too, if its data_prep ended before the failure)
            assert entry["status"] in ("ok", "failed") and name in ended, (name, entry)
        else:
            assert entry["status"] == "not run" and not (out / name).exists(), (name, entry)
    assert {n for n, e in stages.items() if e["status"] == "not run"} >= {
        "train_sentiment",
        "merge_sentiment",
        "adapter_build",
        "evaluate_tasks",
    }


def test_ctrl_c_stops_every_running_stage(tmp_path):
    """Ctrl-C while both trains run: each stage gets SIGTERM, checkpoints and leaves no adapter; the
    runner waits for both, says so in one line and exits 130, and no process of the run is left."""
    cfg = multi_config(tmp_path)
    cfg["train"].update(max_steps=5000, checkpoint_every=1000, log_every=1)  # still training when the signal lands
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _run(write_config(tmp_path, cfg), out, "--jobs", "2"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if sum("step 2/5000" in x for x in lines) == 2:  # both trains are past their second step
                break
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        lines += proc.stdout.readlines()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines)
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 3 and errors[-1].startswith("error: interrupted;"), text[-3000:]
    assert sum("checkpoint saved at step" in e for e in errors) == 2, text[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert {n: s["status"] for n, s in summary["stages"].items()} == {
        "data_prep_tone": "ok",
        "data_prep_sentiment": "ok",
        "train_tone": "interrupted",
        "train_sentiment": "interrupted",
    }
    for task in ("tone", "sentiment"):
        train = out / step_name("train", task)
        assert not (train / "adapter").exists()
        assert (train / "adapter.checkpoints" / "latest" / "meta.json").is_file()
    try:  # the runner waited for its stages: nothing of the run's process group is left
        os.killpg(proc.pid, 0)
        raise AssertionError("a process of the interrupted run is still running")
    except ProcessLookupError:
        pass


def test_jobs_must_be_a_count_and_kfp_local_runs_one_at_a_time(tmp_path):
    for bad in ("0", "-1", "two"):
        proc = run_cli(*_run(ROOT / "configs" / "tiny-phi3.yaml", tmp_path / "r", "--jobs", bad)[1:])
        assert proc.returncode == 2 and "argument --jobs: " in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    proc = run_cli(
        *_run(ROOT / "configs" / "tiny-phi3.yaml", tmp_path / "r", "--jobs", "2", "--runner", "kfp-local")[1:]
    )
    assert proc.returncode != 0 and proc.stderr.startswith("error: --jobs 2: kfp-local runs its tasks one at a time")
    assert not (tmp_path / "r").exists()
