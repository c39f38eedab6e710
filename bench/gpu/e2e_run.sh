#!/usr/bin/env bash
# The production config end to end on GPU 0 with a random-init Phi-3-mini folder; each output line
# time-stamped, GPU 0 memory sampled every 0.5 s (/tmp/gpu0mem.csv) for per-stage peaks.
RUN=${1:-/tmp/e2e}
export CUDA_VISIBLE_DEVICES=0
pgrep -f "query-gpu=timestamp,memory.used" >/dev/null || \
    nvidia-smi -i 0 --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 >> /tmp/gpu0mem.csv &
python3 pipeline.py run --config configs/phi3-mini.yaml --set model.base=/tmp/phi3-mini \
    --set evaluate.min_accuracy=0 --set evaluate.max_int4_drop=1 --out "$RUN" 2>&1 |
    python3 -u -c "import sys, time
for line in sys.stdin: print(f'{time.time():.1f} {line}', end='', flush=True)"
echo "DONE exit ${PIPESTATUS[0]} $(date +%s)"
