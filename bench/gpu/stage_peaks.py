#!/usr/bin/env python
"""Per-stage seconds and peak GPU memory of a run driven by bench/gpu/e2e_run.sh.

Reads the time-stamped pipeline log (``<epoch> ==> <stage>: ...`` lines, ``DONE exit N <epoch>`` at
the end) and the nvidia-smi samples (``YYYY/MM/DD HH:MM:SS.mmm, N MiB``, the machine's clock in UTC).
Peak = the largest device-wide ``memory.used`` sample while the stage ran (CUDA context and the
caching allocator's reserve included).

    python bench/gpu/stage_peaks.py e2e.log gpumem.csv[.gz]
"""

from __future__ import annotations

import datetime
import gzip
import re
import sys


def main(log_path: str, mem_path: str) -> int:
    opener = gzip.open if mem_path.endswith(".gz") else open
    samples = []
    with opener(mem_path, "rt") as f:
        for line in f:
            ts, mem = line.strip().split(", ")
            t = datetime.datetime.strptime(ts, "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
            samples.append((t, int(mem.split()[0])))
    marks = []
    for line in open(log_path):
        if m := re.match(r"(\d+\.\d) ==> (\w+): python", line):
            marks.append((float(m.group(1)), m.group(2)))
        elif m := re.match(r"DONE exit \d+ (\d+)", line):
            marks.append((float(m.group(1)), "end"))
    print("| stage | seconds | peak GPU memory (MiB) |\n|---|---|---|")
    for (t0, name), (t1, _) in zip(marks, marks[1:]):
        peak = max((m for t, m in samples if t0 <= t <= t1), default=None)
        print(f"| {name} | {t1 - t0:.1f} | {peak} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
