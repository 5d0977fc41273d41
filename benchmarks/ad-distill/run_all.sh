#!/usr/bin/env bash
# Reproduce docs/ad-distill.md: bash benchmarks/ad-distill/run_all.sh [bottle|piped|all] [OPTIONS]
# OPTIONS go to `adcore benchmark` (e.g. --seeds 0,1,2, --dry-run, --fresh, --data-root DIR).
# Configuration: config.json (EfficientAD + Student-Teacher at the CPU budget; the teacher distilled in
# every run). Records: benchmarks/ad-distill/results/benchmark/results.jsonl; `table.py` prints the table.
source "$(dirname "$0")/../_common.sh"
GROUP=${1:-all}
shift || true
CONFIG=benchmarks/ad-distill/config.json
case $GROUP in
  bottle) bench $CONFIG --dataset mvtec_bottle:bottle "$@" ;;
  piped) bench $CONFIG --dataset "${PIPED[@]}" "$@" ;;
  all) bench $CONFIG "$@" ;;
  *) echo "usage: $0 [bottle|piped|all] [adcore benchmark options]" >&2; exit 2 ;;
esac
