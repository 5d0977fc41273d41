#!/usr/bin/env bash
# Accuracy of tiled against untiled over several mosaic draws (docs/tiling.md): for each seed, new
# mosaics (make_mosaics.py --seed S: other sheets, layouts and impure cells; the same 8 x 8 sheets of
# 128 px, 1,024 px), then the untiled and the tiled configuration on them; finally the paired
# margins as mean +- std over the seeds (mosaic_seeds.py). Accuracy only: the timings it records are
# not used. Run from the repository root; SEEDS="0 1 2 3 4" by default. About 4 minutes a seed on
# the 2 cores when quiet (tiled PatchCore's coreset fit is most of it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0 1 2 3 4}
# smoke test only: MOSAIC_ARGS="--train 4 --test-good 2 --test-defect 2" BENCH_ARGS="--model padim" SEEDS=90
MOSAIC_ARGS=${MOSAIC_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:-}
for seed in $SEEDS; do
    data=$($PY benchmarks/tiling/make_mosaics.py --piped ../shared/data/piped --paper PA_FLR01_TL \
        --seed "$seed" --out "runs/tiling/mosaics-seed$seed" $MOSAIC_ARGS)
    for mode in untiled tiled; do
        $PY -m adcore.benchmark --config "benchmarks/tiling/$mode.json" --dataset "$data" \
            --out "results/tiling/seed$seed/$mode" --no-plots $BENCH_ARGS
    done
done
mkdir -p benchmarks/tiling/results
$PY benchmarks/tiling/mosaic_seeds.py --results results/tiling --seeds $SEEDS | tee benchmarks/tiling/results/mosaic_seeds.md
