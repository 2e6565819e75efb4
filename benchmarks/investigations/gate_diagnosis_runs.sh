#!/usr/bin/env bash
# Gate-collapse variants, one quickstart training run each (same seed, same data), run one after another.
#   bash benchmarks/investigations/gate_diagnosis_runs.sh NAME [NAME...]   (names below); logs: runs/diag/logs/NAME.log
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 WANDB_MODE=offline
PY=${PY:-.venv/bin/python}  # this checkout's venv (set PY for another)
declare -A ARGS=(
  [baseline]=""
  [notau]="--model.learn_tau false"
  [maskgroup]="--data.mask_same_group true"
  [explore4]="--model.explore_samples 4"
  [retr20]="--model.omega_init_scale 20"
  [lr3e-3]="--model.lr 0.003"
  [lr3e-4]="--model.lr 0.0003"
  [epochs3]="--trainer.max_epochs 3"
  [notau_epochs3]="--model.learn_tau false --trainer.max_epochs 3"
  [maskgroup_retr20]="--data.mask_same_group true --model.omega_init_scale 20"
)
mkdir -p runs/diag/logs
for name in "$@"; do
  d=runs/diag/$name
  start=$(date +%s)
  echo "[$(date +%T)] start $name: ${ARGS[$name]}" >> runs/diag/logs/queue.log
  $PY train.py fit -c configs/quickstart.yaml --trainer.default_root_dir $d \
      --trainer.logger.init_args.save_dir $d --model.export_dir $d/gate ${ARGS[$name]} \
      > runs/diag/logs/$name.log 2>&1
  rc=$?
  echo "[$(date +%T)] end $name rc=$rc wall=$(( $(date +%s) - start ))s" >> runs/diag/logs/queue.log
done
