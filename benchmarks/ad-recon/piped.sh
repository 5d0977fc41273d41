#!/usr/bin/env bash
# All six ad-recon detectors on the three PIPED sets (24 good training images each) at 20 epochs
# (budget: run_models.sh), holding the shared benchmark lock for the batch.
# Usage: benchmarks/ad-recon/piped.sh [OUT_DIR] [THREADS]   (LOCK=" " runs without the shared lock)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/ad-recon/results}
THREADS=${2:-1}
mkdir -p "$OUT"
exec ${LOCK:-flock /tmp/adcore-bench.lock} bash -c '
for category in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do
  bash benchmarks/ad-recon/run_models.sh /work/shared/data/piped "$category" 20 "$0/piped.jsonl" "$0" "$1"
done' "$OUT" "$THREADS"
