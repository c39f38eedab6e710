#!/usr/bin/env bash
# The production config end to end on GPU $E2E_GPU (default 0) with a random-init Phi-3-mini folder; each output line
# time-stamped, that GPU's memory sampled every 0.5 s (/tmp/gpumem.csv) for per-stage peaks.
RUN=${1:-/tmp/e2e}
GPU=${E2E_GPU:-0}
export CUDA_VISIBLE_DEVICES=$GPU
pgrep -f "query-gpu=timestamp,memory.used" >/dev/null || \
    nvidia-smi -i "$GPU" --query-gpu=timestamp,memory.used --format=csv,noheader -lms 500 >> /tmp/gpumem.csv &
python3 pipeline.py run --config configs/phi3-mini.yaml --set model.base=/tmp/phi3-mini \
    --set evaluate.min_accuracy=0 --set evaluate.max_int4_drop=1 --out "$RUN" 2>&1 |
    python3 -u -c "import sys, time
for line in sys.stdin: print(f'{time.time():.1f} {line}', end='', flush=True)"
echo "DONE exit ${PIPESTATUS[0]} $(date +%s)"
