#!/usr/bin/env python
"""data_prep at scale: 1M rows of JSONL (~100 MB) through the real stage, timed, with peak memory.

The stage runs exactly as the pipeline runs it (``python -m stages.data_prep``: validation,
rendering, dedup, stratified split, writing, sealing with content hashes). The baseline, measured
in the same run on the same file, is the least any reader must do: ``json.loads`` on every line
into a list. Each runs in its own process; peak memory is that process's max RSS (``wait4``).

    .venv/bin/python bench/data_prep_scale.py [--rows 1000000] [--keep DIR]

Goal on the 2-core CI machine kind: <= 60 s and <= 2 GB for 1M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["joy", "surprise", "fear", "sadness"]
WORDS = (
    "the a sunny morning walk surprised me quietly with news about old friends and their dogs "
    "thunder rolled over the empty harbour while we waited for a late train home tonight"
).split()

BASELINE = """
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
print(len(rows))
"""


def make_data(path: Path, rows: int, seed: int = 0) -> None:
    """~100 bytes a row, 4 labels, ~5 % exact duplicates (dedup has work to do)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            n = i if rng.random() > 0.05 else rng.randrange(max(i, 1))
            words = " ".join(WORDS[(n * 7 + k * 13) % len(WORDS)] for k in range(8))
            f.write(json.dumps({"phrase": f"{words} no. {n}", "tone": LABELS[n % 4]}) + "\n")


def measure(argv: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB, exit code, stderr tail) of one child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode, err[-2000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", help="write the data and the output here instead of a temporary folder")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="slm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "scale.jsonl"
    if not data.is_file():
        make_data(data, args.rows)
    size_mb = data.stat().st_size / 1e6

    base_s, base_mb, code, err = measure([sys.executable, "-c", BASELINE, str(data)])
    assert code == 0, err
    out = work / "dataset"
    stage_s, stage_mb, code, err = measure(
        [
            sys.executable,
            "-m",
            "stages.data_prep",
            "--dataset",
            str(out),
            "--data.path",
            str(data),
            "--data.eval_fraction",
            "0.1",
        ]
    )
    if code != 0:
        print(err, file=sys.stderr)
        return code
    stats = json.loads((out / "stats.json").read_text())

    print(f"data_prep scale: {args.rows:,} rows, {size_mb:.0f} MB of JSONL, {os.cpu_count()} CPUs")
    print(f"  {'':34} {'seconds':>8} {'peak MB':>8}")
    print(f"  {'baseline: json.loads every line':34} {base_s:8.1f} {base_mb:8.0f}")
    print(f"  {'data_prep stage (end to end)':34} {stage_s:8.1f} {stage_mb:8.0f}")
    print(f"  ratio stage/baseline: {stage_s / base_s:.2f}x time, {stage_mb / base_mb:.2f}x memory")
    print(
        f"  train {stats['train']['rows']:,}, eval {stats['eval']['rows']:,}, duplicates removed "
        f"{stats['duplicates_removed']:,}"
    )
    ok = stage_s <= 60 and stage_mb <= 2048
    print(f"  goal <= 60 s and <= 2048 MB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
