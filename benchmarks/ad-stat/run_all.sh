#!/usr/bin/env bash
# Every ad-stat measurement in docs/ad-stat.md: one process per run (honest peak RSS), runs grouped
# under the shared bench lock so each group measures on a machine free of other benchmarks.
#   bash benchmarks/ad-stat/run_all.sh [OUT.jsonl] [DATA_ROOT]
set -u
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/ad-stat/results.jsonl}
DATA=${2:-/work/shared/data}
RUN="env OMP_NUM_THREADS=2 ADCORE_PROGRESS=0 $PWD/.venv/bin/python benchmarks/ad-stat/run.py --out $OUT"
group() { flock /tmp/adcore-bench.lock bash -c "$1" || echo "FAILED: $1" >&2; }

group "$RUN --model padim --root $DATA/mvtec_bottle --category bottle
       $RUN --model stfpm --root $DATA/mvtec_bottle --category bottle --epochs 30 --eval-every 10
       for c in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do $RUN --model padim --root $DATA/piped --category \$c; done"
group "for c in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do $RUN --model stfpm --root $DATA/piped --category \$c --epochs 50; done"
group "$RUN --model padim --root $DATA/magnetic_tile --category magnetic_tile"
group "$RUN --model stfpm --root $DATA/magnetic_tile --category magnetic_tile --epochs 10"
