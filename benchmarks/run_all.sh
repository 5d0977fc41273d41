#!/usr/bin/env bash
# Reproduce docs/benchmarks.md: every registered detector on every set under ../shared/data.
#
#   bash benchmarks/run_all.sh                       # run (resumes: finished pairs are skipped)
#   bash benchmarks/run_all.sh --fresh               # redo every pair
#   bash benchmarks/run_all.sh --report-only         # rebuild tables, figures and the page only
#   bash benchmarks/run_all.sh --data-root /data     # the sets live elsewhere
#
# The whole run holds the shared measurement lock (ADCORE_BENCH_LOCK, default
# /tmp/adcore-bench.lock; set it empty to run without) so no other measurement shares the CPU.
# On a machine where others must measure too, use `--lock FILE` instead (taken per run).
# Raw results: results/benchmark/ (git-ignored); the page and its figures: docs/benchmarks.md and
# docs/figures/benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
LOCK="${ADCORE_BENCH_LOCK-/tmp/adcore-bench.lock}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
command=("$PYTHON" -m adcore.benchmark --config benchmarks/config.json "$@")
case " $* " in
  *" --report-only "*|*" --dry-run "*) exec "${command[@]}" ;;
esac
if [ -n "$LOCK" ]; then
  exec flock "$LOCK" "${command[@]}"
fi
exec "${command[@]}"
