# Shared set-up of the benchmarks/ad-*/run_all.sh scripts (sourced, not run).
# Every run is `adcore benchmark --config benchmarks/ad-NAME/config.json` (one process per pair,
# resumable: recorded pairs are skipped, --fresh redoes them, --report-only only rebuilds the tables).
# Each run takes the shared measurement lock ADCORE_BENCH_LOCK (default /tmp/adcore-bench.lock; set it
# empty to run without) so other measurements interleave between runs, never during one.
# OMP_WAIT_POLICY=PASSIVE: torch and faiss each bring an OpenMP runtime; spinning idle threads of one
# steal the cores from the other (see docs/ad-memory.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS="${ADCORE_PROGRESS:-0}"
_lock="${ADCORE_BENCH_LOCK-/tmp/adcore-bench.lock}"
LOCK_ARGS=()
[ -n "$_lock" ] && LOCK_ARGS=(--lock "$_lock")

# bench CONFIG [adcore benchmark options...]
bench() {
  local config=$1
  shift
  "$PYTHON" -m adcore.benchmark --config "$config" ${LOCK_ARGS[@]+"${LOCK_ARGS[@]}"} "$@"
}
# the "piped" group; PIPED_SETS narrows it (space-separated), e.g. PIPED_SETS=piped/PA_BDP01_TL
read -r -a PIPED <<< "${PIPED_SETS:-piped/PA_BDP01_TL piped/PA_BRG01_RL piped/PA_FLR01_TL}"
