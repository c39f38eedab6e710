"""The data-change trigger and promotion, on the local runner (the same rules as the engines').

- data_prep publishes ``dataset_hash`` and ``changed`` (its seal's ``parameters``); with
  ``data.promoted_dataset_hash`` equal to the dataset's hash the run ends after data_prep,
  successfully, with status ``skipped`` and the reason, and promotes nothing.
- A run whose every stage passes (the quality gate included) writes ``promoted.json`` with the
  INT4 model, the metrics and the lineage; a failed gate writes none, and ``pipeline.py runs``
  says which is which.

Each scenario copies the session's tiny run, so only the stages whose inputs change re-run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import DAG_SPECS, ROOT, run_cli, run_pipeline, summary

from core import artifacts
from core.hashing import code_hash, digest

GATED = ["train", "merge", "onnx_build", "evaluate"]


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, symlinks=True)
    return out


def _dataset_seal(run: Path) -> dict:
    return artifacts.verify(run / "data_prep" / "dataset", "Dataset")


def _runs(root: Path) -> str:
    proc = run_cli(str(ROOT / "pipeline.py"), "runs", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_data_prep_publishes_its_dataset_hash(tiny_run):
    seal = _dataset_seal(tiny_run)
    assert seal["parameters"] == {"dataset_hash": seal["content_hash"], "changed": "true"}


def test_passing_run_is_promoted_with_lineage(tiny_run):
    record = json.loads((tiny_run / "promoted.json").read_text())
    s = summary(tiny_run)
    assert s["status"] == "ok" and s["promoted"] is True
    model = tiny_run / "onnx_build" / "onnx_model"
    assert record["model"] == {
        "path": str(model),
        "type": "OnnxModel",
        "content_hash": artifacts.verify(model, "OnnxModel")["content_hash"],
    }
    assert record["metrics"] == s["metrics"] and record["metrics"]["onnx_int4"]["accuracy"] >= 0
    lineage = record["lineage"]
    assert lineage["dataset_hash"] == _dataset_seal(tiny_run)["content_hash"]
    assert (lineage["base_model"], lineage["base_revision"]) == ("tiny-random:phi3", None)
    # The config hash covers every stage's parameters (the trigger's own input left out).
    chain = artifacts.verify(tiny_run / "evaluate" / "metrics", "Metrics")["lineage_params"]
    assert sorted(chain) == sorted(DAG_SPECS)
    assert chain["train"]["train.max_steps"] == 12
    assert lineage["config_hash"] == digest(
        {st: {k: v for k, v in p.items() if k != "data.promoted_dataset_hash"} for st, p in chain.items()}
    )
    assert lineage["code_version"]["code_hash"] == digest({st: code_hash(st) for st in sorted(DAG_SPECS)})
    assert re.search(r"yes \(dataset [0-9a-f]{12}\)", _runs(tiny_run))


def test_unchanged_dataset_ends_the_run_after_data_prep(tiny_run, tmp_path):
    out = _copy(tiny_run, tmp_path)
    promoted = _dataset_seal(tiny_run)["content_hash"]
    adapter_before = artifacts.verify(out / "train" / "adapter")["content_hash"]
    proc = run_pipeline(out, f"data.promoted_dataset_hash={promoted}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = summary(out)
    assert s["status"] == "skipped" and s["promoted"] is False
    assert "dataset unchanged since the promoted model" in s["reason"] and promoted in s["reason"]
    assert {n: st["status"] for n, st in s["stages"].items()} == {"data_prep": "ok", **{n: "skipped" for n in GATED}}
    assert "skipping train, merge, onnx_build, evaluate" in proc.stdout
    assert _dataset_seal(out)["parameters"]["changed"] == "false"
    assert not (out / "promoted.json").exists()  # the earlier run's record went with this run
    # The dataset came out identical, so the earlier run's model is still there, still valid.
    assert artifacts.verify(out / "train" / "adapter")["content_hash"] == adapter_before
    assert "skipped" in _runs(out)


def test_changed_dataset_trains(tiny_run, tmp_path):
    """Another promoted hash: changed, so the DAG goes on (here every later stage is cached,
    because the dataset itself is the same) and the run is promoted again."""
    out = _copy(tiny_run, tmp_path)
    proc = run_pipeline(out, "data.promoted_dataset_hash=" + "a" * 64)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = summary(out)
    assert s["status"] == "ok" and s["promoted"] is True
    assert [n for n, st in s["stages"].items() if not st["cached"]] == ["data_prep"]
    assert _dataset_seal(out)["parameters"]["changed"] == "true"
    assert (
        json.loads((out / "promoted.json").read_text())["lineage"]["dataset_hash"] == _dataset_seal(out)["content_hash"]
    )


def test_failed_gate_promotes_nothing(tiny_run, tmp_path):
    out = _copy(tiny_run, tmp_path)
    assert (out / "promoted.json").exists()
    proc = run_pipeline(out, "evaluate.min_accuracy=1.0")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "quality gate failed" in proc.stderr
    s = summary(out)
    assert s["status"] == "failed" and s["promoted"] is False
    assert not (out / "promoted.json").exists()
    listing = _runs(out)
    assert re.search(r"failed .* no\b", listing), listing


def test_runs_lists_every_run_under_a_root(tiny_run, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "a", symlinks=True)
    (root / "b").mkdir()
    (root / "b" / "summary.json").write_text("{not json")
    listing = _runs(root)
    assert str(root / "a") in listing and "unreadable" in listing
    (tmp_path / "empty").mkdir()
    assert _runs(tmp_path / "empty").strip() == "no runs (no summary.json) found"


def test_runs_on_a_missing_folder_is_one_line(tmp_path):
    proc = run_cli(str(ROOT / "pipeline.py"), "runs", "--root", str(tmp_path / "nope"))
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: --root {tmp_path / 'nope'}: not a folder"] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("bad", ["abc", "0" * 63, "G" * 64])
def test_promoted_dataset_hash_is_checked(tmp_path, bad):
    proc = run_pipeline(tmp_path / "run", f"data.promoted_dataset_hash={bad}")
    assert proc.returncode == 2
    assert "data.promoted_dataset_hash" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("min_accuracy,promoted", [(0.0, True), (1.0, False)])
def test_evaluate_writes_its_promotion_record_where_argo_collects_it(tiny_run, tmp_path, min_accuracy, promoted):
    """On Argo the promoting stage writes the record to $SLM_PROMOTION_FILE (the task's output
    artifact `promoted`); a failed gate writes none."""
    from helpers import TINY, stage_cli

    from core.config import load_config
    from pipeline import DAG

    step = DAG["evaluate"]
    params = step.spec.params(load_config(TINY, [f"evaluate.min_accuracy={min_accuracy}"]))
    inputs = {name: str(tiny_run.joinpath(*src)) for name, src in step.wires.items()}
    argv = step.spec.argv(params, inputs, {"metrics": str(tmp_path / "metrics")})
    target = tmp_path / "promotion" / "promoted.json"
    proc = stage_cli("evaluate", *argv[3:], env={"SLM_PROMOTION_FILE": str(target)}, timeout=600)
    if not promoted:
        assert proc.returncode == 3 and "quality gate failed" in proc.stderr
        assert not target.exists()
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(target.read_text())
    local = json.loads((tiny_run / "promoted.json").read_text())
    assert record["promoted"] is True and record["stage"] == "evaluate"
    assert record["model"]["content_hash"] == local["model"]["content_hash"]
    assert record["lineage"]["dataset_hash"] == local["lineage"]["dataset_hash"]
    assert record["lineage"]["config_hash"] == local["lineage"]["config_hash"]
    assert record["metrics"] == json.loads((tmp_path / "metrics" / "metrics.json").read_text())["summary"]
