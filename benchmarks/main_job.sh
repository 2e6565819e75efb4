#!/usr/bin/env bash
# Times the README's main job (train + generate) from a fresh clone of this repository's HEAD, with an empty
# $MOP_CACHE; the set-up (this checkout's .venv and the pip cache) is reused. Prints TRAIN_S, GENERATE_S, TOTAL_S,
# the generated texts' length and their persona echo share.
# Usage: bash benchmarks/main_job.sh [WORKDIR]   (default /tmp/mop-main-job)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/mop-main-job}
export MOP_CACHE=$WORK-cache HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONPATH=$WORK
rm -rf "$WORK" "$MOP_CACHE" && git clone -q "$REPO" "$WORK" && cd "$WORK"
git log --oneline -1
P=$REPO/.venv/bin
$P/mop assets check > "$WORK/assets.log" 2>&1
uptime
t0=$(date +%s)
$P/mop train -c configs/quickstart.yaml 2>&1 | grep "val/nll_per_token \|fit wall\|exported"
t1=$(date +%s)
$P/mop generate --gating runs/quickstart/gate --model gemma3-270m -c configs/quickstart.yaml --split test \
    --shuffle --num-samples 200 --output runs/quickstart/samples.jsonl --no-progress
t2=$(date +%s)
uptime
echo "TRAIN_S=$((t1 - t0)) GENERATE_S=$((t2 - t1)) TOTAL_S=$((t2 - t0))"
$P/python - <<'PY'
import json, re, statistics
rows = [json.loads(line) for line in open("runs/quickstart/samples.jsonl")]
words = [len(r["text"].split()) for r in rows]
print(f"{len(rows)} rows, mean {statistics.mean(words):.1f} words, median {statistics.median(words)}")


def tokens(text):
    return re.findall(r"[a-z0-9']+", (text or "").lower())


def echoes(row):
    """Persona echo: the text starts with "You are" or repeats a run of 5 words of its persona."""
    if row["text"].lstrip().lower().startswith("you are"):
        return True
    p, t = tokens(row.get("persona")), tokens(row["text"])
    runs = {tuple(p[i:i + 5]) for i in range(len(p) - 4)}
    return any(tuple(t[i:i + 5]) in runs for i in range(len(t) - 4))


echo = sum(map(echoes, rows))
print(f"persona echo: {echo} of {len(rows)} ({echo / len(rows):.1%})")
PY
