#!/usr/bin/env bash
# Reproduce docs/ad-stat.md: bash benchmarks/ad-stat/run_all.sh [bottle|piped|magnetic|all] [OPTIONS]
# OPTIONS go to `adcore benchmark` (e.g. --seeds 0,1,2, --dry-run, --fresh, --data-root DIR).
# Configuration: config.json (PaDiM + STFPM; STFPM's learning curve every 10 epochs; timm imported before the fit).
# Records: benchmarks/ad-stat/results/benchmark/results.jsonl; `table.py` prints the page's tables.
source "$(dirname "$0")/../_common.sh"
GROUP=${1:-all}
shift || true
CONFIG=benchmarks/ad-stat/config.json
case $GROUP in
  bottle) bench $CONFIG --dataset mvtec_bottle:bottle "$@" ;;
  piped) bench $CONFIG --dataset "${PIPED[@]}" "$@" ;;
  magnetic) bench $CONFIG --dataset magnetic_tile:magnetic_tile "$@" ;;
  all) bench $CONFIG "$@" ;;
  *) echo "usage: $0 [bottle|piped|magnetic|all] [adcore benchmark options]" >&2; exit 2 ;;
esac
