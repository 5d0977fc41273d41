#!/usr/bin/env bash
# All three PIPED sets for both detectors under ONE hold of the shared bench lock:
#   flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 bash benchmarks/ad-flow/piped.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for model in fastflow differnet; do
  for category in PA_BDP01_TL PA_BRG01_RL PA_FLR01_TL; do
    if [ "$model" = fastflow ]; then params='{"epochs": 25, "batch_size": 8}'
    else params='{"epochs": 30, "batch_size": 8, "view_pool": 8, "fc_hidden": 512, "num_test_transforms": 8}'; fi
    .venv/bin/python benchmarks/ad-flow/run.py "$model" --root /work/shared/data/piped --category "$category" \
      --params "$params" --out "benchmarks/ad-flow/results/${model}_${category}.json"
  done
done
