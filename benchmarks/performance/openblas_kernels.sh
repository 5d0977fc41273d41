#!/usr/bin/env bash
# PatchCore's latency with faiss' bundled OpenBLAS on its SSE3 fallback kernels (what it chose by itself
# on a CPU model it does not know, before ad_memory.faiss_loader) against the kernels the loader names
# for this CPU. "before" forces OPENBLAS_CORETYPE=Prescott (a user's setting wins over the loader's);
# "after" leaves it unset. Fresh process per measurement, order A B B A per round, each under the lock.
#
#   bash benchmarks/performance/openblas_kernels.sh MODEL.safetensors [IMAGES] [ROUNDS] [BATCH]
#   e.g. bash benchmarks/performance/openblas_kernels.sh runs/deployment/patchcore.safetensors   # prepare.sh's model
# Prints one line per measurement: label, batch, ms per image (median call), peak RSS MB.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
MODEL=${1:?a .safetensors model}
IMAGES=${2:-../shared/data/mvtec_bottle/bottle/test}
ROUNDS=${3:-3}
BATCH=${4:-1}
PY=${PY:-.venv/bin/python}
LOCK=${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
for _ in $(seq "$ROUNDS"); do
  for mode in before after after before; do
    if [ "$mode" = before ]; then export OPENBLAS_CORETYPE=Prescott; else unset OPENBLAS_CORETYPE; fi
    flock "$LOCK" "$PY" benchmarks/deployment/latency.py --engine torch --model "$MODEL" --images "$IMAGES" \
        --limit 24 --batch "$BATCH" --label "$mode" \
      | "$PY" -c "import json, sys; r = json.loads(sys.stdin.read()); print(r['label'], r['batch'], r['ms_per_image_median'], r['peak_rss_mb'])"
  done
done
