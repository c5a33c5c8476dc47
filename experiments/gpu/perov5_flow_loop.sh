#!/usr/bin/env bash
# The training loop on a GPU (issue 30): loop against its own step, then
# the whole perov5_csp_flow_cpu schedule (16k steps) timed end to end.
#
#   bash experiments/gpu/perov5_flow_loop.sh TRAIN.extxyz VAL.extxyz OUT_DIR [LOOP_STEPS]
#   (TRAIN_STEPS=N shortens the schedule, e.g. to try the script on a CPU)
#
# The data as extxyz (pymatgen need not be installed there): convert the
# CSVs first with readers.read_structures + io.write_extxyz. Writes
# loop.json, train_summary.json, metrics.jsonl and timing.txt into OUT_DIR.
set -euo pipefail
train=$1; val=$2; out=$3; loop_steps=${4:-1000}
flags=experiments/flags/perov5_csp_flow_cpu.flags
mkdir -p "$out"
export PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true) \
  | tee "$out/timing.txt"
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())' | tee -a "$out/timing.txt"
cache=$(mktemp -d)
python3 experiments/benchmark_loop.py --flagfile=$flags --train_data="$train" --val_data="$val" \
  --cache_dir="$cache" --steps="$loop_steps" --out="$out/loop.json"
run=$(mktemp -d)/run
start=$(date +%s.%N)
python3 experiments/train_ddpm.py --flagfile=$flags --train_data="$train" \
  --val_data="$val" --cache_dir="$cache" --workdir="$run" --noprogress \
  --train_steps="${TRAIN_STEPS:-16000}"
end=$(date +%s.%N)
python3 -c "print('train_ddpm.py ${TRAIN_STEPS:-16000} steps, wall s (data cached):', $end - $start)" \
  | tee -a "$out/timing.txt"
cp "$run/train_summary.json" "$run/metrics.jsonl" "$out/"
