#!/usr/bin/env bash
# All six ad-recon detectors on the three PIPED sets (24 good training images each), one process per
# run, holding the shared benchmark lock for the batch. Budget: input_size 128 (the sets' own size;
# metrics at 256 px), base_channels 16, 20 epochs, batch 8, Adam lr 2e-3.
# Usage: benchmarks/ad-recon/piped.sh [OUT_DIR] [THREADS]   (LOCK=" " runs without the shared lock)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/ad-recon/results}
THREADS=${2:-1}
mkdir -p "$OUT"
exec ${LOCK:-flock /tmp/adcore-bench.lock} bash -c '
OUT=$0; THREADS=$1
BUDGET=(--param input_size=128 --param base_channels=16 --param epochs=20 --param batch_size=8 --param learning_rate=0.002)
for category in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do
  for model in vanilla_ae unet_ae vae beta_vae wae resnet_ae; do
    env OMP_NUM_THREADS=$THREADS ADCORE_PROGRESS=0 .venv/bin/python benchmarks/ad-recon/run.py \
      --model $model --root /work/shared/data/piped --category $category "${BUDGET[@]}" \
      --out "$OUT/piped.jsonl" --figure "$OUT/${category}_$model.png"
  done
done' "$OUT" "$THREADS"
