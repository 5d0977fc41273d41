#!/usr/bin/env bash
# Reproduce docs/ad-flow.md: bash benchmarks/ad-flow/run_all.sh [bottle|magnetic|piped|map-variants|all] [OPTIONS]
# OPTIONS go to `adcore benchmark` (e.g. --seeds 0,1,2, --dry-run, --fresh, --data-root DIR).
# Configuration: config.json (FastFlow + DifferNet, the page's budget per set). Records:
# benchmarks/ad-flow/results/benchmark/results.jsonl; `report.py` prints the table and draws the learning curves.
source "$(dirname "$0")/../_common.sh"
GROUP=${1:-all}
shift || true
CONFIG=benchmarks/ad-flow/config.json
case $GROUP in
  bottle) bench $CONFIG --dataset mvtec_bottle:bottle "$@" ;;
  magnetic) bench $CONFIG --dataset magnetic_tile:magnetic_tile "$@" ;;
  piped) bench $CONFIG --dataset "${PIPED[@]}" "$@" ;;
  map-variants)  # a probe, not a benchmark run: FastFlow after 12 epochs scored with other map variants
    DATA=${ADCORE_DATA:-../shared/data}
    flock "${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}" "$PYTHON" benchmarks/ad-flow/map_variants.py \
      --root "$DATA/mvtec_bottle" --category bottle --epochs 12 > benchmarks/ad-flow/results/fastflow_bottle_map_variants.txt ;;
  all) bench $CONFIG "$@" ;;
  *) echo "usage: $0 [bottle|magnetic|piped|map-variants|all] [adcore benchmark options]" >&2; exit 2 ;;
esac
