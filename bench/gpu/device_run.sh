#!/usr/bin/env bash
# One bundled GPU validation call, run on the device machine from the repo root:
#   bash bench/gpu/device_run.sh            (needs .whl/pk.tar.xz carried and $OUT set)
# .whl/pk.tar.xz holds site/ (bitsandbytes 0.50.2 cuda13 libs only, onnxruntime 1.32.0 CPU,
# onnxruntime-genai-cuda 0.18.0, pydantic 2.14 + deps) and tf524/ (transformers 5.24.0,
# used only if the image's transformers fails the import probe).
# Stages run with PYTHONUNBUFFERED; every part has its own timeout so the call ends in time.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false SLM_CACHE_DIR=/tmp/slm-cache
LOG=$OUT/device.log
exec > >(tee -a "$LOG") 2>&1
T0=$SECONDS
stamp() { echo "=== [$((SECONDS - T0)) s] $*"; }

stamp "unpack"
mkdir -p /tmp/pk && tar -C /tmp/pk -xJf .whl/pk.tar.xz || exit 3
export PYTHONPATH=/tmp/pk/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import importlib.metadata as m
for n in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "onnxruntime", "onnxruntime-genai-cuda",
          "onnx", "onnx-ir", "onnxscript", "pydantic", "safetensors", "tokenizers", "huggingface-hub", "numpy"):
    try:
        print(f"{n}=={m.version(n)}", end="  ")
    except m.PackageNotFoundError:
        print(f"{n}: MISSING", end="  ")
print()
EOF
stamp "probe imports (image transformers)"
if ! python3 -c "import peft, bitsandbytes, pydantic, onnxruntime_genai.models.builder; import bitsandbytes.functional as F; print('probe ok', bitsandbytes.__version__)"; then
    stamp "probe failed: switching to transformers 5.24.0"
    export PYTHONPATH=/tmp/pk/site:/tmp/pk/tf524:$PWD
    python3 -c "import transformers, onnxruntime_genai.models.builder; print('probe ok with', transformers.__version__)"
fi

COMMON="--config configs/tiny-phi3.yaml --set runtime.device=cuda --set train.quantization=nf4"
stamp "A: full DAG on cuda, nf4, onnx EP cuda"
timeout 200 python3 pipeline.py run $COMMON --set onnx.execution_provider=cuda --out /tmp/runA
echo "A exit $?"
mkdir -p /tmp/keep && cp -r /tmp/runA /tmp/keep/runA_cudaEP 2>/dev/null

stamp "B: same run folder, onnx EP cpu (data_prep/train/merge should be cached)"
timeout 150 python3 pipeline.py run $COMMON --set onnx.execution_provider=cpu --out /tmp/runA
echo "B exit $?"

stamp "C: QLoRA Phi-3-mini-shaped benchmark"
timeout 260 python3 bench/gpu/qlora_phi3_shape.py --out "$OUT"
echo "C exit $?"

if [ $((SECONDS - T0)) -lt 450 ]; then
    stamp "D: plain LoRA (quantization none, bf16) on cuda, onnx EP cpu"
    timeout $((540 - (SECONDS - T0))) python3 pipeline.py run --config configs/tiny-phi3.yaml --set runtime.device=cuda \
        --set onnx.execution_provider=cpu --out /tmp/runD
    echo "D exit $?"
else
    stamp "D skipped: out of time"
fi

stamp "collect"
cp -r /tmp/runA /tmp/keep/runA_cpuEP 2>/dev/null; cp -r /tmp/runD /tmp/keep/runD 2>/dev/null
(cd /tmp/keep && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.yaml' \) -size -4M \
    -print0 | tar --null -czf "$OUT/runs.tgz" -T -)
(cd /tmp/keep && find . -type f -printf '%s\t%p\n' | sort -k2) > "$OUT/run_files.txt"
stamp "done"
