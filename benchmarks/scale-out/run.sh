#!/usr/bin/env bash
# The scale-out benchmark (docs/scale-out.md): PaDiM and PatchCore on MVTec bottle test images
# (repeated), `adcore predict` locally, on Ray with 1 and 2 one-CPU actors (Ray started by the command,
# then a running head joined with --address), and PaDiM exported to ONNX (torch-free actors).
# Run from the repository root after `bash scripts/setup.sh`, on an otherwise idle machine: every
# step holds the shared measurement lock (the whole script runs under it).
# `bash benchmarks/scale-out/run.sh --quick` is the smoke mode (a few images, no lock needed).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 RAY_USAGE_STATS_ENABLED=0
if [ "${1:-}" != "--quick" ]; then
    exec 9>"${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}"
    flock 9
fi
$PY benchmarks/scale-out/run.py "$@"
