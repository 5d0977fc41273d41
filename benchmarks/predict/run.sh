#!/usr/bin/env bash
# The predict throughput benchmark (docs/predict.md): PaDiM and PatchCore on PIPED PA_FLR01_TL, the
# 72 test images and 2,000 (the test set repeated), CLI with and without heatmaps against the Python
# API's batched predict on pre-loaded tensors. Run from the repository root after `bash scripts/setup.sh`,
# on an otherwise idle machine: it holds the shared measurement lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0
exec 9>"${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}"
flock 9
mkdir -p benchmarks/predict/results
DATA=${PIPED:-../shared/data/piped}/PA_FLR01_TL
$PY benchmarks/predict/throughput.py --data "$DATA" --model-name padim --images 2000 \
    > benchmarks/predict/results/padim.jsonl
$PY benchmarks/predict/throughput.py --data "$DATA" --model-name patchcore -p coreset_ratio=0.01 --images 2000 \
    > benchmarks/predict/results/patchcore.jsonl
