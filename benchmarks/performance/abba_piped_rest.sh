#!/usr/bin/env bash
# Issue 21: the two PIPED sets not yet measured back to back (PA_BRG01_RL, PA_FLR01_TL), as PA_BDP01_TL
# was (results/quiet-3): PatchCore, SPADE and PaDiM; adcore (this tree), before (b145a6d) and anomalib
# 2.7 (PatchCore and PaDiM; it has no SPADE); ABBA order, a fresh process per measurement, 256 px, 2 threads.
# One abba.py call per set, each holding the bench lock; results in OUT/<set>/ (results.jsonl, summary.md).
#
#   benchmarks/performance/abba_piped_rest.sh [OUT] [--quick]
#
# Needs PY (adcore's interpreter, default .venv/bin/python), ANOMALIB_PY (default ../anomalib-venv/bin/python)
# and ANOMALIB_CACHE (default /tmp/anomalib-cache, the runner's converted weights). --quick: abba.py's tiny
# generated dataset, one set, to check the script (~3 min). Real run: ~11-12 min on a quiet machine.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
OUT=${1:-benchmarks/performance/results/quiet-4}
QUICK=${2:-}
PY=${PY:-.venv/bin/python}
ANOMALIB_PY=${ANOMALIB_PY:-../anomalib-venv/bin/python}
ANOMALIB_CACHE=${ANOMALIB_CACHE:-/tmp/anomalib-cache}
LOCK=${LOCK:-/tmp/adcore-bench.lock}
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0
sets=(piped/PA_BRG01_RL piped/PA_FLR01_TL)
[[ "$QUICK" == "--quick" ]] && sets=(quick)
for set in "${sets[@]}"; do
    name=${set##*/}
    extra=(--datasets "$set")
    [[ "$set" == quick ]] && extra=(--quick)
    echo "== $set ($(date -u +%H:%M:%S))"
    flock "$LOCK" "$PY" benchmarks/performance/abba.py --out "$OUT/$name" --before b145a6d \
        --anomalib-python "$ANOMALIB_PY" --anomalib-cache "$ANOMALIB_CACHE" --models patchcore spade padim "${extra[@]}"
    git worktree remove --force "$OUT/$name/before-b145a6d"
done
echo "== done ($(date -u +%H:%M:%S)); summaries: $OUT/*/summary.md"
