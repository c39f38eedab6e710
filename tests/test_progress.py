"""Progress as a log file shows it: plain lines with elapsed time and ETA, never a carriage return."""

from __future__ import annotations

import re


def test_stages_report_progress_in_plain_lines_off_a_terminal(tiny_run):
    raw = (tiny_run.parent / "stdout.log").read_bytes() + (tiny_run.parent / "stderr.log").read_bytes()
    assert b"\r" not in raw and b"\x1b" not in raw  # no bar redraws, no escape codes in a file
    out = (tiny_run.parent / "stdout.log").read_text()
    err = (tiny_run.parent / "stderr.log").read_text()

    # train: the per-log_every loss line carries elapsed and ETA (tiny-phi3: 12 steps, log_every 2)
    steps = re.findall(r"^\[train\] step (\d+)/12 loss [\d.]+, [\d.]+s/step \(\d+%, elapsed \S+, ETA \S+\)$", err, re.M)
    assert steps[:3] == ["1", "2", "4"], err[-3000:]
    assert re.search(r"^\[train\] step 12/12 .*\(done in [\d.:]+s?\)$", err, re.M)

    # onnx_build: the builder's layers (the tiny Phi-3 has 2), then the end line with the time it took
    assert re.search(r"^\[onnx_build\] model builder: int4 cpu on ", err, re.M)
    assert re.search(r"^\[onnx_build\] model builder 2/2 layers read \(done in [\d.:]+s?\)$", err, re.M)

    # evaluate: the rows of each model (max_samples 24)
    for model in ("pytorch", "onnx_int4"):
        assert re.search(rf"^\[evaluate\] evaluate {model} 24/24 rows \(done in [\d.:]+s?\)$", err, re.M), model

    # the local runner: each stage's elapsed time as it ends
    for stage in ("data_prep", "train", "merge", "onnx_build", "evaluate"):
        assert re.search(rf"^==> {stage}: ok in \d+\.\ds$", out, re.M), stage
