#!/usr/bin/env bash
# Reproduce docs/ad-recon.md: bash benchmarks/ad-recon/run_all.sh [bottle|piped|magnetic|all] [OPTIONS]
# OPTIONS go to `adcore benchmark` (e.g. --seeds 0,1,2, --dry-run, --fresh, --data-root DIR).
# Configuration: config.json (the six detectors at the shared budget; models at 128 px, data and masks at
# 256 px; every fit also scored with other map/score settings). Records:
# benchmarks/ad-recon/results/benchmark/results.jsonl; `table.py` prints the page's table.
source "$(dirname "$0")/../_common.sh"
GROUP=${1:-all}
shift || true
CONFIG=benchmarks/ad-recon/config.json
case $GROUP in
  bottle) bench $CONFIG --dataset mvtec_bottle:bottle "$@" ;;
  piped) bench $CONFIG --dataset "${PIPED[@]}" "$@" ;;
  magnetic) bench $CONFIG --dataset magnetic_tile:magnetic_tile "$@" ;;
  all) bench $CONFIG "$@" ;;
  *) echo "usage: $0 [bottle|piped|magnetic|all] [adcore benchmark options]" >&2; exit 2 ;;
esac
