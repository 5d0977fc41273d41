#!/usr/bin/env bash
# The adcore serve load test (docs/serving.md): PaDiM on MVTec bottle, 8 clients × 250 requests on loopback
# against the in-process floor and a one-client batch-1 run. About 3 minutes on an idle machine. Run from
# the repository root after `bash scripts/setup.sh`; it holds the shared measurement lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0
exec 9>"${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}"
flock 9
DATA=${BOTTLE:-../shared/data/mvtec_bottle/bottle}
$PY benchmarks/serving/load_test.py --data "$DATA" --clients 8 --requests 250 --out benchmarks/serving/results
