#!/usr/bin/env bash
# The H200 measurements of docs/benchmarks.md, as device calls (bash bench/gpu/h200_session.sh PHASE),
# run from the repo root on a 2-GPU machine (nvidia-h200-x2) with no network.
# Carried wheels (ignored paths, see docs/benchmarks.md "How to reproduce"):
#   .whl/carry1/pk-small.tar.xz  bitsandbytes 0.50.2 (CUDA 13 libs), liger-kernel 0.8.5, pydantic 2.14 (+deps), as site/
#   .whl/carry1/og.tar.xz        onnxruntime-genai-cuda 0.18.0, as site/
#   .whl/carryN/ort.part0K       onnxruntime-gpu 1.31.1 (CUDA 13, TensorRT provider removed), tar.xz (202 MB) split
#                                in 5 (34 MB + 4 x 42 MB): one part a call, kept in /tmp while the machine stays warm
#                                (30 s idle release), joined in the last call.
# Phases, one call each, back to back: bench (throughput suites on both GPUs, loss curves, then the production
# DAG started in the background on GPU 1), ddp1 (1-GPU DDP baseline on GPU 0), poll, final (onnxruntime-gpu,
# evaluate on CUDA, decode bench, 2-GPU DDP).
# Second session (CUDA evaluate, packed DDP), five calls on one nvidia-h200-x2:
#   ddp2      carry .whl/carry1: random Phi-3-mini; packed DDP 1 vs 2 GPUs; then the code is frozen into /tmp/repo
#             and the production DAG starts from there in the background on GPU 1 (setsid), with /tmp/ort (not
#             there yet) first on PYTHONPATH. The frozen copy keeps the DAG's cache keys fixed whatever the
#             next calls' working trees hold.
#   parts     carry .whl/carry2, 3, 4 in turn: the part lands in /tmp/parts; the DAG's progress
#   ddp3      carry .whl/carry1 (a fresh machine): GPU topology; the gradient all-reduce alone
#             (bench/gpu/allreduce_probe.py); a 3-step train run to fill Triton's cache; then packed DDP 1 vs 2
#             GPUs again (60 steps), both runs with warm kernels (in ddp2 the 1-GPU run compiled liger's
#             kernels in its first step, ~10 s, and the 2-GPU run found them cached).
#   ddp4      carry .whl/carry1 (a fresh machine): as ddp3 with twice the step (train.grad_accum=8: 32 blocks,
#             32k tokens a step), 30 steps: whether the per-step cost that does not shrink with the GPUs is amortized.
#   evalcuda  carry .whl/carry5: join onnxruntime-gpu into /tmp/ort (atomically: a stage starting meanwhile
#             sees all or nothing); wait for the DAG; if evaluate did not pass on CUDA, run the DAG again from
#             /tmp/repo (every other stage cached: evaluate only); then the decode bench on GPU 0.
set -u
PHASE=${1:?phase}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false SLM_CACHE_DIR=/tmp/slm-cache HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p /tmp/res /tmp/parts
exec > >(tee -a "$OUT/device-$PHASE.log") 2>&1
T0=$SECONDS
stamp() { echo "=== [$((SECONDS - T0)) s] $*"; }
left() { echo $(( ${1} - (SECONDS - T0) )); }

for f in .whl/carry*/ort.part*; do [ -f "$f" ] && cp -n "$f" /tmp/parts/; done
if [ -f .whl/carry1/pk-small.tar.xz ] && [ ! -d /tmp/pk ]; then mkdir -p /tmp/pk && tar -C /tmp/pk -xJf .whl/carry1/pk-small.tar.xz; fi
if [ -f .whl/carry1/og.tar.xz ] && [ ! -d /tmp/og ]; then mkdir -p /tmp/og && tar -C /tmp/og -xJf .whl/carry1/og.tar.xz; fi
export PYTHONPATH=/tmp/pk/site:/tmp/og/site:$PWD
nvlibs() { local nv; nv=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))" 2>/dev/null)/nvidia
    ls -d "$nv"/*/lib 2>/dev/null | tr '\n' ':'; }
if [ -d /tmp/ort/onnxruntime ]; then
    export PYTHONPATH=/tmp/ort:$PYTHONPATH
    NV=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))" 2>/dev/null)/nvidia
    export LD_LIBRARY_PATH=$(ls -d $NV/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
fi
ls /tmp/parts; stamp "phase $PHASE"

collect() {
    (cd /tmp/res && tar -czf "$OUT/res-$PHASE.tgz" . 2>/dev/null)
    stamp "collected"
}
trap collect EXIT

# Packed 1,024-token blocks, 1 GPU then 2 GPUs, after a 3-step run that fills Triton's kernel
# cache (so the 1-GPU run does not pay for compiling what the 2-GPU run then finds cached).
# packed_ddp WARMUP_DEADLINE DEADLINE STEPS OUT [--set ...]
packed_ddp() {
    local warm=$1 deadline=$2 steps=$3 out=$4; shift 4
    [ -d /tmp/phi3-mini ] || CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/gpu/make_phi3_mini.py /tmp/phi3-mini
    stamp "Triton cache warm-up (3 steps, 1 GPU)"
    timeout $(left $warm) python3 bench/gpu/ddp_scaling.py --model /tmp/phi3-mini --gpus 2 --only 1 --steps 3 \
        --workloads packed --skip 1 --out /tmp/warm >/dev/null
    stamp "packed DDP $*: 1 GPU, then 2 GPUs"
    timeout $(left $deadline) python3 bench/gpu/ddp_scaling.py --model /tmp/phi3-mini --gpus 2 --only both \
        --steps $steps --skip 5 --workloads packed "$@" --out $out
}

case $PHASE in
bench)
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers, peft, bitsandbytes, liger_kernel, triton; print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__, triton.__version__, torch.cuda.device_count())"
    [ -d /tmp/phi3-mini ] || CUDA_VISIBLE_DEVICES=0 timeout 90 python3 bench/gpu/make_phi3_mini.py /tmp/phi3-mini
    stamp "throughput suites: main on GPU 0 (then loss curves), more on GPU 1 (then the production DAG)"
    (CUDA_VISIBLE_DEVICES=0 timeout $(left 400) python3 bench/train_throughput.py --suite main --model-dir /tmp/phi3-mini \
        --out /tmp/res --tag tp_main --variant-timeout 150
     stamp "loss curves (GPU 0)"
     CUDA_VISIBLE_DEVICES=0 timeout $(left 540) python3 bench/gpu/loss_curve.py --config configs/tiny-phi3.yaml --steps 50 \
        --set runtime.device=cuda --set train.quantization=nf4 --out /tmp/res/loss \
        --variant plain:train.padding_free=off,train.kernels=none --variant plain2:train.padding_free=off,train.kernels=none \
        --variant fast: --variant fast2:) & G0=$!
    CUDA_VISIBLE_DEVICES=1 timeout $(left 420) python3 bench/train_throughput.py --suite more --model-dir /tmp/phi3-mini \
        --out /tmp/res --tag tp_more --variant-timeout 150
    stamp "production DAG in the background on GPU 1 (setsid)"
    E2E_GPU=1 setsid nohup bash bench/gpu/e2e_run.sh /tmp/e2e > /tmp/e2e.log 2>&1 < /dev/null &
    wait $G0  # (a bare wait would also wait for the tee above)
    tail -3 /tmp/e2e.log
    ;;
ddp1)
    stamp "1-GPU DDP baseline on GPU 0 (the DAG runs on GPU 1)"
    CUDA_VISIBLE_DEVICES=0 timeout ${2:-120} python3 bench/gpu/ddp_scaling.py --model /tmp/phi3-mini --gpus 2 --only 1 \
        --steps 30 --workloads tone --out /tmp/res/ddp
    grep -E "==>|DONE" /tmp/e2e.log | tail -6
    ;;
poll)
    for i in $(seq 1 ${2:-6}); do grep -q "^DONE" /tmp/e2e.log && break; sleep 5; done
    grep -E "==>|DONE|Error|error" /tmp/e2e.log | tail -8
    ;;
final)
    if [ ! -d /tmp/ort/onnxruntime ]; then
        stamp "join onnxruntime-gpu"
        cat /tmp/parts/ort.part0* > /tmp/ort.tar.xz && sha256sum /tmp/ort.tar.xz && mkdir -p /tmp/ort && tar -C /tmp/ort -xJf /tmp/ort.tar.xz
        export PYTHONPATH=/tmp/ort:$PYTHONPATH
        NV=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")/nvidia
        export LD_LIBRARY_PATH=$(ls -d $NV/*/lib | tr '\n' ':')${LD_LIBRARY_PATH:-}
    fi
    python3 -c "import onnxruntime as o, onnxruntime_genai as g; print(o.__version__, o.get_available_providers(), g.__version__)"
    for i in $(seq 1 40); do grep -q "^DONE" /tmp/e2e.log && break; sleep 5; done
    stamp "e2e first pass: $(grep ^DONE /tmp/e2e.log)"
    stamp "evaluate on CUDA (same run folder: earlier stages cached)"
    E2E_GPU=1 timeout $(left 300) bash bench/gpu/e2e_run.sh /tmp/e2e > /tmp/e2e2.log 2>&1; tail -25 /tmp/e2e2.log
    stamp "decode throughput, raw onnxruntime-genai vs the stage (GPU 1)"
    CUDA_VISIBLE_DEVICES=1 timeout $(left 400) python3 bench/gpu/eval_throughput.py --model /tmp/e2e/onnx_build/onnx_model \
        --rows 350 --batches 1,8,32 --out /tmp/res/eval
    stamp "2-GPU DDP"
    timeout $(left 500) python3 bench/gpu/ddp_scaling.py --model /tmp/phi3-mini --gpus 2 --only n --steps 30 \
        --workloads tone --out /tmp/res/ddp
    stamp "DDP smoke: tiny Phi-3 1 vs 2 GPUs (loss curves)"
    timeout $(left 570) python3 bench/gpu/ddp_scaling.py --config configs/tiny-phi3.yaml --model tiny-random:phi3 --gpus 2 \
        --steps 12 --workloads tone --set train.quantization=nf4 --out /tmp/res/ddp_tiny
    ;;
ddp2)
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers, peft, bitsandbytes, liger_kernel; print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__, torch.cuda.device_count())"
    [ -d /tmp/phi3-mini ] || CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/gpu/make_phi3_mini.py /tmp/phi3-mini
    stamp "packed DDP: 1 GPU, then 2 GPUs"
    timeout $(left ${2:-420}) python3 bench/gpu/ddp_scaling.py --model /tmp/phi3-mini --gpus 2 --only both \
        --steps ${3:-40} --workloads packed --out /tmp/res/ddp_packed
    stamp "production DAG from a frozen copy, in the background on GPU 1 (setsid)"
    rm -rf /tmp/repo && mkdir -p /tmp/repo && tar --exclude=./.whl --exclude=./.venv -cf - . | tar -C /tmp/repo -xf -
    (cd /tmp/repo && PYTHONPATH=/tmp/ort:/tmp/pk/site:/tmp/og/site:/tmp/repo LD_LIBRARY_PATH=$(nvlibs)${LD_LIBRARY_PATH:-} \
        E2E_GPU=1 setsid nohup bash bench/gpu/e2e_run.sh /tmp/e2e > /tmp/e2e.log 2>&1 < /dev/null &)
    sleep 5; tail -2 /tmp/e2e.log
    ;;
ddp3)
    nvidia-smi topo -m
    timeout 120 python3 -m torch.distributed.run --standalone --nproc-per-node 2 bench/gpu/allreduce_probe.py \
        | tee /tmp/res/allreduce_probe.json
    packed_ddp 240 ${2:-560} ${3:-60} /tmp/res/ddp_packed_warm
    ;;
ddp4)
    packed_ddp 200 ${2:-500} ${3:-30} /tmp/res/ddp_packed_ga8 --set train.grad_accum=8
    ;;
parts)
    grep -E "==>|DONE|Error|error" /tmp/e2e.log | tail -6
    ;;
evalcuda)
    if [ ! -d /tmp/ort/onnxruntime ]; then
        stamp "join onnxruntime-gpu"
        cat /tmp/parts/ort.part0* > /tmp/ort.tar.xz && sha256sum /tmp/ort.tar.xz  # f20cc5fef785c788b02610dd2dfabadf5ef7fdace694499cb14e95701a599179
        rm -rf /tmp/ort.new && mkdir -p /tmp/ort.new && tar -C /tmp/ort.new -xJf /tmp/ort.tar.xz && mv /tmp/ort.new /tmp/ort
    fi
    export PYTHONPATH=/tmp/ort:$PYTHONPATH LD_LIBRARY_PATH=$(nvlibs)${LD_LIBRARY_PATH:-}
    python3 -c "import onnxruntime as o, onnxruntime_genai as g; print(o.__version__, o.get_available_providers(), g.__version__)"
    stamp "waiting for the DAG"
    for i in $(seq 1 $(( $(left ${2:-300}) / 5 ))); do grep -q "^DONE" /tmp/e2e.log && break; sleep 5; done
    grep -E "==>|DONE|seconds|cached|evaluate|Error" /tmp/e2e.log | tail -20
    if grep -q "^DONE" /tmp/e2e.log && ! grep -q "^DONE exit 0" /tmp/e2e.log; then
        stamp "the DAG again from /tmp/repo (earlier stages cached)"
        (cd /tmp/repo && PYTHONPATH=/tmp/ort:/tmp/pk/site:/tmp/og/site:/tmp/repo E2E_GPU=1 timeout $(left 420) \
            bash bench/gpu/e2e_run.sh /tmp/e2e > /tmp/e2e2.log 2>&1); tail -30 /tmp/e2e2.log
    fi
    stamp "decode throughput, raw onnxruntime-genai vs the stage (GPU 0)"
    CUDA_VISIBLE_DEVICES=0 timeout $(left 560) python3 bench/gpu/eval_throughput.py --model /tmp/e2e/onnx_build/onnx_model \
        --rows 350 --batches 1,8,32 --out /tmp/res/eval
    python3 bench/gpu/stage_peaks.py /tmp/e2e.log /tmp/gpumem.csv
    [ -f /tmp/e2e2.log ] && python3 bench/gpu/stage_peaks.py /tmp/e2e2.log /tmp/gpumem.csv
    cp /tmp/e2e/evaluate/metrics/metrics.json /tmp/res/e2e_evaluate_metrics.json 2>/dev/null
    ;;
esac
cp /tmp/e2e.log /tmp/e2e2.log /tmp/gpumem.csv /tmp/res/ 2>/dev/null
for d in /tmp/e2e/*/*/; do [ -f "$d/metrics.json" ] && cp "$d/metrics.json" "/tmp/res/e2e_$(basename $(dirname $d))_metrics.json"; done
cp /tmp/e2e/summary.json /tmp/res/e2e_summary.json 2>/dev/null
cp /tmp/e2e/onnx_build/onnx_model/build_info.json /tmp/res/ 2>/dev/null
stamp "end"
