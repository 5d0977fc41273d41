#!/usr/bin/env bash
# Every ad-stat measurement in docs/ad-stat.md, one process per run, each under the shared bench lock.
#   bash benchmarks/ad-stat/run_all.sh [OUT.jsonl] [DATA_ROOT]
set -u
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/ad-stat/results.jsonl}
DATA=${2:-/work/shared/data}
PY=$PWD/.venv/bin/python
run() { flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 ADCORE_PROGRESS=0 $PY benchmarks/ad-stat/run.py --out "$OUT" "$@" \
        || echo "FAILED: $*" >&2; }
run --model padim --root "$DATA/mvtec_bottle" --category bottle
for c in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do run --model padim --root "$DATA/piped" --category $c; done
run --model stfpm --root "$DATA/mvtec_bottle" --category bottle --epochs 40 --eval-every 10
for c in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do run --model stfpm --root "$DATA/piped" --category $c --epochs 100; done
run --model padim --root "$DATA/magnetic_tile" --category magnetic_tile
run --model stfpm --root "$DATA/magnetic_tile" --category magnetic_tile --epochs 10
