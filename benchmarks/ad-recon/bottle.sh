#!/usr/bin/env bash
# All six ad-recon detectors on MVTec bottle at 12 epochs (budget: run_models.sh), each also scored
# with other map/score settings on the same fit, holding the shared benchmark lock for the batch.
# Usage: benchmarks/ad-recon/bottle.sh [OUT_DIR] [THREADS]   (LOCK=" " skips the lock)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/ad-recon/results}
THREADS=${2:-1}
mkdir -p "$OUT"
exec ${LOCK:-flock /tmp/adcore-bench.lock} env VARIANTS=1 bash benchmarks/ad-recon/run_models.sh \
  /work/shared/data/mvtec_bottle bottle 12 "$OUT/bottle.jsonl" "$OUT" "$THREADS"
