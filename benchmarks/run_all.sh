#!/usr/bin/env bash
# Reproduce docs/benchmarks.md: every registered detector on every set under ../shared/data.
#
#   bash benchmarks/run_all.sh                       # run (resumes: finished pairs are skipped)
#   bash benchmarks/run_all.sh --fresh               # redo every pair
#   bash benchmarks/run_all.sh --report-only         # rebuild tables, figures and the page only
#   bash benchmarks/run_all.sh --data-root /data     # the sets live elsewhere
#
# Each (detector, data set) pair runs in its own process under the shared measurement lock
# (/tmp/adcore-bench.lock, taken per run so other measurements interleave between runs, never
# during one). Raw results: results/benchmark/results.jsonl (git-ignored); the page and its
# figures: docs/benchmarks.md and docs/figures/benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$PYTHON" -m adcore.benchmark --config benchmarks/config.json "$@"
