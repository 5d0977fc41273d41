#!/usr/bin/env bash
# Reproduce docs/ad-memory.md: bash benchmarks/ad-memory/run_all.sh [piped|bottle|magnetic|scaling|coreset|all] [OUT.jsonl]
# Each group holds the shared benchmark lock once, so timings are not disturbed by other runs.
# OMP_WAIT_POLICY=PASSIVE: torch and faiss each bring an OpenMP runtime; spinning idle threads of
# one steal the two cores from the other (see docs/ad-memory.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
GROUP=${1:-all}
OUT=${2:-benchmarks/ad-memory/results.jsonl}
DATA=${ADCORE_DATA:-/work/shared/data}
RUN="env OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 .venv/bin/python benchmarks/ad-memory/run.py --out $OUT"
# ADMEM_LOCKED=1: the caller already holds the lock (to run several groups in one turn)
locked() { if [[ ${ADMEM_LOCKED:-0} == 1 ]]; then bash -c "$1"; else flock /tmp/adcore-bench.lock bash -c "$1"; fi; }

if [[ $GROUP == piped || $GROUP == all ]]; then
  locked "for c in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do for m in patchcore spade; do
            $RUN --model \$m --root $DATA/piped --category \$c; done; done"
fi
if [[ $GROUP == bottle || $GROUP == all ]]; then
  locked "$RUN --model patchcore --root $DATA/mvtec_bottle --category bottle --extra-indexes hnsw,ivf; $RUN --model spade --root $DATA/mvtec_bottle --category bottle"
fi
if [[ $GROUP == magnetic || $GROUP == all ]]; then
  # 761 images = 779k patches; uncapped, the exact greedy needs ~78k passes over data it cannot prune
  # (see docs), so this run caps the patches at 200k by uniform reservoir sampling (max_patches)
  locked "$RUN --model patchcore --root $DATA/magnetic_tile --category magnetic_tile --params '{\"max_patches\": 200000}' --extra-indexes ivf"
  locked "$RUN --model spade --root $DATA/magnetic_tile --category magnetic_tile"
fi
if [[ $GROUP == scaling || $GROUP == all ]]; then
  # fit time and memory as the training set grows (the full 761-image fit is in the magnetic group)
  locked "for n in 50 200; do $RUN --model patchcore --root $DATA/magnetic_tile --category magnetic_tile --train-limit \$n --fit-only; done"
fi
if [[ $GROUP == coreset || $GROUP == all ]]; then
  # coreset iterations/s and RSS sampled during the loop (JSON on stdout)
  locked "env OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 .venv/bin/python benchmarks/ad-memory/coreset.py --root $DATA/mvtec_bottle --category bottle | tee -a ${OUT%.jsonl}.coreset.jsonl"
fi
