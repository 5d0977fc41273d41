#!/usr/bin/env bash
# Reproduce docs/ad-memory.md: bash benchmarks/ad-memory/run_all.sh [piped|bottle|magnetic|scaling|coreset|all] [OPTIONS]
# OPTIONS go to `adcore benchmark` (e.g. --seeds 0,1,2, --dry-run, --fresh, --data-root DIR).
# Configurations: config.json (PatchCore + SPADE, IVF/HNSW variants on the same bank) and scaling.json.
# Records: benchmarks/ad-memory/results/benchmark{,-scaling}/results.jsonl; `table.py` prints the page's tables.
source "$(dirname "$0")/../_common.sh"
GROUP=${1:-all}
shift || true
CONFIG=benchmarks/ad-memory/config.json
case $GROUP in
  piped) bench $CONFIG --dataset "${PIPED[@]}" "$@" ;;
  bottle) bench $CONFIG --dataset mvtec_bottle:bottle "$@" ;;
  # 761 images = 779k patches: the run caps them at 200k by uniform reservoir sampling (max_patches in the config)
  magnetic) bench $CONFIG --dataset magnetic_tile:magnetic_tile "$@" ;;
  scaling) bench benchmarks/ad-memory/scaling.json "$@" ;;
  coreset)  # a probe, not a benchmark run: coreset iterations/s and RSS sampled during the loop (JSON on stdout)
    DATA=${ADCORE_DATA:-../shared/data}
    flock "${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}" "$PYTHON" benchmarks/ad-memory/coreset.py \
      --root "$DATA/mvtec_bottle" --category bottle | tee -a benchmarks/ad-memory/results/coreset.jsonl ;;
  all) bench $CONFIG "$@"; bench benchmarks/ad-memory/scaling.json "$@" ;;
  *) echo "usage: $0 [piped|bottle|magnetic|scaling|coreset|all] [adcore benchmark options]" >&2; exit 2 ;;
esac
