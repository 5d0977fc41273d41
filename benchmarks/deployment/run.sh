#!/usr/bin/env bash
# The deployment benchmark (docs/deployment.md): PaDiM, PatchCore, EfficientAD and one autoencoder on
# MVTec bottle at 256 px; each trained once, exported to ONNX and OpenVINO (with the parity check),
# then ms per image at batch 1 and 8 and the predicting process's peak RSS in torch eager, ONNX
# Runtime and OpenVINO, one process per engine; and the installed size of the full environment.
# Run from the repository root after `bash scripts/setup.sh`, on an otherwise idle machine: it holds
# the shared measurement lock. Results go to benchmarks/deployment/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/mvtec_bottle/bottle}
OUT=runs/deployment
RESULTS=benchmarks/deployment/results.jsonl
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0
exec 9>"${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}"
flock 9
mkdir -p "$OUT"
: > "$RESULTS"
for model in padim patchcore efficientad vanilla_ae; do
    file="$OUT/$model.safetensors"
    [ -f "$file" ] || $PY -m adcore.cli train "$model" "$DATA" -p input_size=256 --out "$file"
    for format in onnx openvino; do
        $PY -m adcore.cli export "$file" --format "$format" --out "$OUT/$model/$format" --check "$DATA"/test/*/
    done
    $PY benchmarks/deployment/latency.py --engine torch --model "$file" --images "$DATA/test" --label "$model" >> "$RESULTS"
    for format in onnx openvino; do
        $PY benchmarks/deployment/latency.py --engine "$format" --artefact "$OUT/$model/$format" --images "$DATA/test" \
            --label "$model" >> "$RESULTS"
    done
done
# install size of the full environment (the lean runtime's is measured by runtime/'s own test)
du -sm "$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | \
    awk '{print "{\"label\": \"full environment\", \"site_packages_mb\": " $1 "}"}' >> "$RESULTS"
