#!/usr/bin/env bash
# The tiling benchmark (docs/tiling.md): PIPED mosaics of 8x8 sheets (1,024 px) with one impure sheet,
# PaDiM and PatchCore untiled (resized to 256 px) against tiled (256-px tiles at native resolution),
# then one 8,000 x 8,000 image per detector for peak memory. Run from the repository root after
# `bash scripts/setup.sh`; holds the measurement lock so no other timing runs beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
exec 9>/tmp/adcore-bench.lock
flock 9
$PY benchmarks/tiling/make_mosaics.py --piped ../shared/data/piped --paper PA_FLR01_TL --out runs/tiling/mosaics
$PY -m adcore.benchmark --config benchmarks/tiling/untiled.json
$PY -m adcore.benchmark --config benchmarks/tiling/tiled.json
mkdir -p benchmarks/tiling/results docs/figures/tiling
for model in padim patchcore; do
    extra=""; [ "$model" = patchcore ] && extra="-p coreset_ratio=0.01"
    # fit and save in one process, predict the 8,000-px image in a fresh one: its peak is the prediction's
    $PY benchmarks/tiling/huge_image.py --mosaics runs/tiling/mosaics/PA_FLR01_TL_mosaic --model "$model" $extra \
        --save "runs/tiling/huge_$model.safetensors"
    # the image as load_image gives it (float32), then as a decoder gives it (uint8, converted tile by tile)
    for dtype in float32 uint8; do
        $PY benchmarks/tiling/huge_image.py --mosaics runs/tiling/mosaics/PA_FLR01_TL_mosaic --dtype $dtype \
            --model-file "runs/tiling/huge_$model.safetensors" >> benchmarks/tiling/results/huge_image.jsonl
    done
done
cp results/tiling/untiled/results.jsonl benchmarks/tiling/results/untiled.jsonl
cp results/tiling/tiled/results.jsonl benchmarks/tiling/results/tiled.jsonl
