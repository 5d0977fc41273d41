#!/usr/bin/env bash
# Accuracy over seeds (issue 23) for the trained detectors of ad-stat (STFPM, PaDiM's channel draw),
# ad-flow and ad-distill, at each page's stated budget: bash benchmarks/seeds.sh [bottle|piped|magnetic|all]
#
# Accuracy does not need a quiet machine, so these runs take NO measurement lock (ADCORE_BENCH_LOCK
# empty): they never block a timing run, and their seconds/latencies are NOT timings (the pages take
# only the accuracy from these records). Run it niced: `nice -n 15 bash benchmarks/seeds.sh all`.
# Resumable: every pair (detector, data set, seed) is one record in that page's results.jsonl and
# is skipped once recorded, so stopping and re-running the same command continues where it was.
# The time limit is a day (86400 s) so that a run paused with SIGSTOP (e.g. during someone else's
# quiet measurement window) is not killed as over its limit when it is continued.
# Records: benchmarks/ad-{stat,flow,distill}/results/benchmark/results.jsonl.
# One PIPED set for every detector first: PIPED_SETS=piped/PA_BDP01_TL nice -n 15 bash benchmarks/seeds.sh piped
set -uo pipefail
cd "$(dirname "$0")/.."
export ADCORE_BENCH_LOCK=
SEEDS=${SEEDS:-0,1,2}
GROUP=${1:-all}

# one pair of (page, detector) over the seeds on one group of sets; a failure goes on to the next
pair() {
  local page=$1 sets=$2 model=$3
  echo "[$(date -u +%H:%M:%S)] $page $model $sets seeds $SEEDS" >&2
  bash "benchmarks/$page/run_all.sh" "$sets" --model "$model" --seeds "$SEEDS" --time-limit 86400 --no-plots \
    || echo "[$(date -u +%H:%M:%S)] $page $model $sets: exit $?" >&2
}

# cheapest first within each group (costs from the pages' single-run records)
group() {
  local sets=$1
  pair ad-distill "$sets" student_teacher
  pair ad-distill "$sets" efficientad
  pair ad-flow "$sets" differnet
  pair ad-stat "$sets" stfpm
  pair ad-flow "$sets" fastflow
  pair ad-stat "$sets" padim
}

# magnetic tile: the pages whose configuration holds it (ad-distill's does not); cheapest first
magnetic() {
  pair ad-stat magnetic padim
  pair ad-flow magnetic differnet
  pair ad-stat magnetic stfpm
  pair ad-flow magnetic fastflow
}

case $GROUP in
  bottle|piped) group "$GROUP" ;;
  magnetic) magnetic ;;
  all) group bottle; group piped; magnetic ;;
  *) echo "usage: $0 [bottle|piped|magnetic|all]" >&2; exit 2 ;;
esac
