#!/usr/bin/env bash
# The main job: install everything, then train PatchCore on the embedded PIPED paper sample
# (offline EfficientNet-Lite0 weights), calibrate its threshold on held-out good images,
# evaluate it on the sample's test split and write heatmaps to runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=${ADCORE_QUICKSTART_MODEL:-patchcore}
.venv/bin/adcore eval "$MODEL" examples/sample_data/piped/PA_FLR01_TL --out runs/quickstart
echo "Heatmaps: runs/quickstart/heatmaps/   model: runs/quickstart/model.safetensors"
echo "Score new images: .venv/bin/adcore predict runs/quickstart/model.safetensors IMAGE_OR_FOLDER --out runs/predictions"
