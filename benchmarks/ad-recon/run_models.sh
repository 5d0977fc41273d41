#!/usr/bin/env bash
# The six ad-recon detectors on one MVTec-layout category, one process each (honest peak RSS), with the
# shared training budget: input_size 128 (maps upsampled to the data's size for the metrics),
# base_channels 16, batch 8, Adam lr 2e-3, EPOCHS epochs; everything else at the defaults.
# With VARIANTS=1 every fitted model is also scored with other map/score settings (no refit):
# error="ssim" and image_score="max"; resnet_ae, whose default is error="feature", with error="l2",
# error="ssim" and image_score="max". Takes no lock: bottle.sh and piped.sh hold it around the batch.
# Usage: benchmarks/ad-recon/run_models.sh ROOT CATEGORY EPOCHS OUT_JSONL FIGURE_DIR THREADS
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$1 CATEGORY=$2 EPOCHS=$3 OUT_JSONL=$4 FIGURE_DIR=$5 THREADS=$6
BUDGET=(--param input_size=128 --param base_channels=16 --param epochs="$EPOCHS" --param batch_size=8 --param learning_rate=0.002)
for model in vanilla_ae unet_ae vae beta_vae wae resnet_ae; do
  VARIANT_ARGS=()
  if [ "${VARIANTS:-0}" = 1 ]; then
    VARIANT_ARGS=(--variant "error=\"ssim\"" --variant "image_score=\"max\"")
    [ "$model" = resnet_ae ] && VARIANT_ARGS=(--variant "error=\"l2\"" --variant "error=\"ssim\"" --variant "image_score=\"max\"")
  fi
  env OMP_NUM_THREADS="$THREADS" ADCORE_PROGRESS=0 .venv/bin/python benchmarks/ad-recon/run.py \
    --model "$model" --root "$ROOT" --category "$CATEGORY" "${BUDGET[@]}" ${VARIANT_ARGS[@]+"${VARIANT_ARGS[@]}"} \
    --out "$OUT_JSONL" --figure "$FIGURE_DIR/${CATEGORY}_$model.png"
done
