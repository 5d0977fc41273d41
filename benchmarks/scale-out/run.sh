#!/usr/bin/env bash
# The scale-out benchmark (docs/scale-out.md): local predict, Ray 1 actor, Ray 2 actors, for PaDiM and
# PatchCore on 2,000 MVTec bottle test images (repeated). Run from the repository root after
# `bash scripts/setup.sh`, on an otherwise idle machine: it holds the shared measurement lock.
# `bash benchmarks/scale-out/run.sh --quick` is the smoke mode (40 images, no lock needed).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0
if [ "${1:-}" != "--quick" ]; then
    exec 9>"${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}"
    flock 9
fi
$PY benchmarks/scale-out/run.py "$@"
