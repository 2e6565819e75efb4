#!/usr/bin/env bash
# GPU check: the scoring and generation benchmarks in bf16 on CUDA, with tokens/s and model FLOPs utilisation
# (achieved model GFLOP/s over the peak of an 8192^3 bf16 matmul measured in the same run).
#
#   bash benchmarks/gpu_check.sh                 # on a machine with an NVIDIA GPU and the bundled models
#   bash benchmarks/gpu_check.sh --shapes DIR    # on one without them: random weights of the same shapes
#   bash benchmarks/gpu_check.sh --dry-run [M]   # the benchmark commands on CPU, tiny sizes (M: model)
#
# --shapes DIR takes the folders `python benchmarks/model_shapes.py pack DIR` writes (configs and tokenizers,
# no weights; speed does not depend on the weights) and adds what needs no real weights: the Llama-3-8B shape
# (the paper's LM) through the scorer, and an end-to-end run on CUDA: train.py fit (bf16-mixed, keyword
# personas), the export, generate.py from that export, and benchmarks/fidelity.py with the LM as a folder.
# Results (JSON, logs) go to $GPU_CHECK_OUT (default benchmarks/results); a step that fails is reported and
# the others still run (exit status 1).
# Without CUDA (and without --dry-run) it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline}

if [[ "${1:-}" == "--dry-run" ]]; then
    set -e
    MODEL=${2:-smollm2-135m}
    OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
    echo "gpu_check: dry run on CPU with $MODEL (tiny sizes; results in $OUT)"
    "$PY" benchmarks/scoring_speed.py --device cpu --models "$MODEL" --dtypes float32 --pairs 4 --step 4 \
        --naive-batch 4 --out "$OUT/scoring_speed_dry.json"
    "$PY" benchmarks/generation_speed.py --device cpu --model "$MODEL" --samples 4 --new-tokens 4 \
        --batch-sizes 1 4 --out "$OUT/generation_speed_dry.json"
    exit 0
fi

DEVICE=${GPU_CHECK_DEVICE:-cuda}  # cpu: rehearse the --shapes steps on a machine without a GPU (slow)
if [[ "$DEVICE" == cuda ]] && { ! command -v nvidia-smi >/dev/null 2>&1 \
        || ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }; then
    echo "gpu_check: no CUDA device is visible to torch on this machine: nothing to measure, exiting."
    echo "gpu_check: run it on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --dry-run for the CPU path."
    exit 0
fi
OUT=${GPU_CHECK_OUT:-benchmarks/results}
mkdir -p "$OUT"
SCALE=${GPU_CHECK_SCALE:-1}  # 0: tiny sizes (a rehearsal)
FAILED=()
# step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, go on after a failure; with
# GPU_CHECK_STEPS="build train ...": only the steps whose name up to its first _ is one of those words
step() {
    local name=$1 limit=$2
    shift 2
    if [[ -n "${GPU_CHECK_STEPS:-}" && " $GPU_CHECK_STEPS " != *" ${name%%_*} "* ]]; then return; fi
    echo "== $name ($(date -u +%T))"
    local t0=$SECONDS
    if timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1; then
        echo "== $name: ok in $((SECONDS - t0)) s"
    else
        echo "== $name: FAILED (status $?) after $((SECONDS - t0)) s"
        FAILED+=("$name")
    fi
}
if [[ "$SCALE" == 1 ]]; then
    PAIRS=(--pairs 400 --step 200 --naive-batch 16 --max-batch-tokens 16384)
    GEN=(--samples 64 --new-tokens 32 --batch-sizes 1 16 64)
    BIG=(--pairs 400 --step 200 --naive-batch 8 --max-batch-tokens 16384)
    TRAIN=(--trainer.max_epochs 2)
    NGEN=128 NFID=64
else
    PAIRS=(--pairs 4 --step 4 --naive-batch 4)
    GEN=(--samples 4 --new-tokens 4 --batch-sizes 1 4)
    BIG=(--pairs 2 --step 2 --naive-batch 2)
    TRAIN=(--trainer.max_epochs 1 --data.dataset.max_records "{train: 40, val: 8}")
    NGEN=4 NFID=12  # the evaluation needs 10 texts a set
fi
DTYPE=bfloat16 DTYPES=(${GPU_CHECK_DTYPES:-float32 bfloat16}) BIGLM=llama3-8b
[[ "$DEVICE" == cpu ]] && DTYPE=float32 DTYPES=(float32)
[[ "$SCALE" == 1 ]] || BIGLM=smollm2-135m  # a rehearsal builds the small shape on the fly instead
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c "import torch, transformers, lightning; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| lightning', lightning.__version__)"

if [[ "${1:-}" != "--shapes" ]]; then
    step scoring_speed 900 "$PY" benchmarks/scoring_speed.py --device "$DEVICE" --dtypes "${DTYPES[@]}" \
        "${PAIRS[@]}" --threads 4 --out "$OUT/scoring_speed_gpu.json"
    step generation_speed 900 "$PY" benchmarks/generation_speed.py --device "$DEVICE" --dtype "$DTYPE" \
        "${GEN[@]}" --threads 4 --out "$OUT/generation_speed_gpu.json"
    if ((${#FAILED[@]})); then echo "gpu_check: failed: ${FAILED[*]}"; exit 1; fi
    exit 0
fi

SHAPES=${2:?usage: gpu_check.sh --shapes DIR (from benchmarks/model_shapes.py pack DIR)}
WORK=$(mktemp -d)
M=$WORK/models
step build_models 300 "$PY" benchmarks/model_shapes.py build "$SHAPES" "$M" \
    --only smollm2-135m gemma3-270m minilm-l6 --config-only llama3-8b
# the quickstart config with the random-weight LM and embedder
sed -e "s#lm: smollm2-135m#lm: $M/smollm2-135m#" -e "s#embedder: minilm-l6#embedder: $M/minilm-l6#" \
    configs/quickstart.yaml > "$WORK/quickstart.yaml"
CFG=(--config "$WORK/quickstart.yaml")

step scoring_speed 300 "$PY" benchmarks/scoring_speed.py --device "$DEVICE" "${CFG[@]}" \
    --models "$M/smollm2-135m" "$M/gemma3-270m" --dtypes "${DTYPES[@]}" "${PAIRS[@]}" --threads 4 \
    --out "$OUT/scoring_speed_gpu.json"
step scoring_speed_8b 300 "$PY" benchmarks/scoring_speed.py --device "$DEVICE" "${CFG[@]}" --random-weights \
    --models "$M/$BIGLM" --dtypes "$DTYPE" "${BIG[@]}" --threads 4 --out "$OUT/scoring_speed_gpu_8b.json"
for lm in smollm2-135m gemma3-270m; do
    step "generation_speed_$lm" 300 "$PY" benchmarks/generation_speed.py --device "$DEVICE" "${CFG[@]}" \
        --model "$M/$lm" --dtype "$DTYPE" "${GEN[@]}" --threads 4 --out "$OUT/generation_speed_gpu_$lm.json"
done

# end to end: train on the device (keyword personas: a random LM writes no personas), export, generate; a
# plain CSV logger, so that the check needs no wandb
ACCEL=gpu
[[ "$DEVICE" == cpu ]] && ACCEL=cpu
RUN=$WORK/run
PRECISION=()
[[ "$DEVICE" == cuda ]] && PRECISION=(--trainer.precision bf16-mixed --model.lm_dtype bfloat16)
step train 300 "$PY" train.py fit -c "$WORK/quickstart.yaml" --trainer.accelerator "$ACCEL" "${PRECISION[@]}" \
    --data.personas.synthesizer keywords --data.artifacts_dir "$RUN/artifacts" \
    --trainer.default_root_dir "$RUN" --model.export_dir "$RUN/gate" "${TRAIN[@]}" \
    --trainer.logger "{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: $RUN}}"
cp "$RUN"/lightning_logs/version_0/metrics.csv "$OUT/train_metrics.csv" 2>/dev/null || true
step generate 300 "$PY" generate.py --gating "$RUN/gate" --model "$M/smollm2-135m" -c "$WORK/quickstart.yaml" \
    --split test --num_samples "$NGEN" --output "$RUN/generated.jsonl" --accelerator "$ACCEL" --devices 1 \
    --dtype "$DTYPE"
cp "$RUN/generated.jsonl" "$OUT/generated.jsonl" 2>/dev/null || true
# the fidelity benchmark the way a stronger LM takes it, an LM folder in --runs, from the export above:
# generation on the device and the evaluation (random weights: its figures mean nothing, the path is checked)
step fidelity 300 "$PY" benchmarks/fidelity.py --config "$WORK/quickstart.yaml" --workdir "$RUN/fidelity" \
    --gate "$RUN/gate" --runs "$M/smollm2-135m:mop" "$M/smollm2-135m:fewshot" --num-samples "$NFID" \
    --model-samples --embedders "$M/minilm-l6" --steps generate,evaluate --plot "" \
    --generate-args "--accelerator $ACCEL --devices 1 --dtype $DTYPE" --output "$RUN/fidelity/result"
cp "$RUN/fidelity/result.md" "$OUT/fidelity_shapes.md" 2>/dev/null || true
rm -rf "$WORK"
if ((${#FAILED[@]})); then echo "gpu_check: failed: ${FAILED[*]}"; exit 1; fi
echo "gpu_check: every step ran"
