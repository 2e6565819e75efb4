#!/usr/bin/env bash
# GPU check: the scoring and generation benchmarks in bf16 on CUDA, with tokens/s and model FLOPs utilisation
# (achieved model GFLOP/s over the peak of an 8192^3 bf16 matmul measured in the same run).
#
#   bash benchmarks/gpu_check.sh                 # on a machine with an NVIDIA GPU (~5 minutes on one H100)
#   bash benchmarks/gpu_check.sh --dry-run [M]   # the same commands on CPU, tiny sizes (M: model, default smollm2-135m)
#
# Without CUDA (and without --dry-run) it says so and exits 0. Results: benchmarks/results/*_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

if [[ "${1:-}" == "--dry-run" ]]; then
    MODEL=${2:-smollm2-135m}
    OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
    echo "gpu_check: dry run on CPU with $MODEL (tiny sizes; results in $OUT)"
    "$PY" benchmarks/scoring_speed.py --device cpu --models "$MODEL" --dtypes float32 --pairs 4 --step 4 \
        --naive-batch 4 --out "$OUT/scoring_speed_dry.json"
    "$PY" benchmarks/generation_speed.py --device cpu --model "$MODEL" --samples 4 --new-tokens 4 \
        --batch-sizes 1 4 --out "$OUT/generation_speed_dry.json"
    exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1 \
        || ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to torch on this machine: nothing to measure, exiting."
    echo "gpu_check: run it on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --dry-run for the CPU path."
    exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" benchmarks/scoring_speed.py --device cuda --dtypes float32 bfloat16 --pairs 400 --step 200 \
    --naive-batch 16 --max-batch-tokens 16384 --threads 4 --out benchmarks/results/scoring_speed_gpu.json
"$PY" benchmarks/generation_speed.py --device cuda --dtype bfloat16 --samples 128 --new-tokens 64 \
    --batch-sizes 1 32 128 --threads 4 --out benchmarks/results/generation_speed_gpu.json
