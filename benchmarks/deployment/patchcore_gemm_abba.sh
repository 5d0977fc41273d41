#!/usr/bin/env bash
# PatchCore's exported search before and after the Gemm form (docs/deployment.md, "The kNN in the graph"):
# torch eager on the model, ONNX Runtime and OpenVINO on the artefact exported before (OLD) and after
# (NEW) the change, batch 1, 32 bottle test images, 2 threads; 3 rounds of the order
# torch old new newov oldov oldov newov new old torch, one fresh latency.py process each, under the lock.
#   OLD=runs/deployment/patchcore NEW=runs/deployment/patchcore-gemm bash benchmarks/deployment/patchcore_gemm_abba.sh
# (NEW: `adcore export runs/deployment/patchcore.safetensors --format onnx|openvino --out NEW/onnx|openvino`)
# Prints "label ms_per_image_median peak_rss_mb" per process (benchmarks/deployment/patchcore_gemm_abba.txt).
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-runs/deployment/patchcore.safetensors}
OLD=${OLD:?the earlier artefacts folder} NEW=${NEW:?the re-exported artefacts folder}
LOCK=${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
for _ in 1 2 3; do
  for v in torch old new newov oldov oldov newov new old torch; do
    case $v in
      torch) t=(--engine torch --model "$MODEL") ;;
      old) t=(--engine onnx --artefact "$OLD/onnx") ;;
      new) t=(--engine onnx --artefact "$NEW/onnx") ;;
      oldov) t=(--engine openvino --artefact "$OLD/openvino") ;;
      newov) t=(--engine openvino --artefact "$NEW/openvino") ;;
    esac
    flock "$LOCK" "$PY" benchmarks/deployment/latency.py "${t[@]}" --images ../shared/data/mvtec_bottle/bottle/test \
        --limit 32 --batch 1 --label "$v" \
      | "$PY" -c "import json, sys; r = json.loads(sys.stdin.read()); print(r['label'], r['ms_per_image_median'], r['peak_rss_mb'])"
  done
done
