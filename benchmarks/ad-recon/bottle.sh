#!/usr/bin/env bash
# All six ad-recon detectors on MVTec bottle, one process each (honest peak RSS), holding the shared
# benchmark lock for the batch. Training budget: input_size 128 (maps are upsampled to 256 px for the
# metrics), base_channels 16, 12 epochs, batch 8, Adam lr 2e-3; everything else at the defaults.
# Each fitted model is also scored with error="ssim" and image_score="max" (no refit); resnet_ae, whose
# default is error="ssim", with error="l2", error="feature" and image_score="max".   Usage: benchmarks/ad-recon/bottle.sh [OUT_DIR] [THREADS]   (LOCK=" " skips the lock)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/ad-recon/results}
THREADS=${2:-1}
mkdir -p "$OUT"
exec ${LOCK:-flock /tmp/adcore-bench.lock} bash -c '
OUT=$0; THREADS=$1
BUDGET=(--param input_size=128 --param base_channels=16 --param epochs=12 --param batch_size=8 --param learning_rate=0.002)
for model in vanilla_ae unet_ae vae beta_vae wae resnet_ae; do
  VARIANTS=(--variant "error=\"ssim\"" --variant "image_score=\"max\"")
  # resnet_ae scores with SSIM by default: compare the L2 and perceptual errors on the same fit
  [ $model = resnet_ae ] && VARIANTS=(--variant "error=\"l2\"" --variant "error=\"feature\"" --variant "image_score=\"max\"")
  env OMP_NUM_THREADS=$THREADS ADCORE_PROGRESS=0 .venv/bin/python benchmarks/ad-recon/run.py \
    --model $model --root /work/shared/data/mvtec_bottle --category bottle "${BUDGET[@]}" "${VARIANTS[@]}" \
    --out "$OUT/bottle.jsonl" --figure "$OUT/bottle_$model.png"
done' "$OUT" "$THREADS"
