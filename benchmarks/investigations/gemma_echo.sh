#!/bin/bash
# Gemma-3-270M with the SmolLM2-trained gate (runs/fidelity/gate): echo rates under the training template and a
# base-LM template (64 test contexts per set; results in benchmarks/results/gemma_echo/). Run from the repo root.
set -e
cd "$(dirname "$0")/../.."; source .venv/bin/activate; export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
mkdir -p runs/echo
T='{persona}
Here is a {exemplar[label]} review you wrote of the movie {exemplar[movie]}: "{exemplar_response}"
Here is a {label} review you wrote of the movie {movie}: "'
for m in mop zerogen; do
  mop generate --gating runs/fidelity/gate --model gemma3-270m -c configs/fidelity.yaml --split test --shuffle \
    --num-samples 64 --method $m --output runs/echo/train_template_$m.jsonl --no-progress
  mop generate --gating runs/fidelity/gate --model gemma3-270m -c configs/fidelity.yaml --split test --shuffle \
    --num-samples 64 --method $m --output runs/echo/base_template_$m.jsonl --no-progress \
    --prompt-template "$T" --stop '"' $'\n'
done
T="$T" python - <<'PY'
import json
from mop.export import load_export
from mop.evaluate import prompt_copy_rates
import os
base = load_export("runs/fidelity/gate")
T = os.environ["T"]
for f in ["train_template_mop", "base_template_mop", "train_template_zerogen", "base_template_zerogen"]:
    rows = [json.loads(l) for l in open(f"runs/echo/{f}.jsonl")]
    e = load_export("runs/fidelity/gate")
    if f.startswith("base"):
        e.config = {**e.config, "prompt_template": T}
    r = prompt_copy_rates(rows, e)
    words = sum(len(x["text"].split()) for x in rows) / len(rows)
    empty = sum(not x["text"] for x in rows)
    print(f, {k: (round(v, 3) if v is not None else None) for k, v in r.items()}, "words", round(words, 1), "empty", empty)
PY
