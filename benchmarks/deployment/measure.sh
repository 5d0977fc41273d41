#!/usr/bin/env bash
# MEASURE step of the deployment benchmark (docs/deployment.md, "Benchmarks"): run on an otherwise
# idle machine, after prepare.sh. For each prepared model (PaDiM, PatchCore, EfficientAD, vanilla
# autoencoder) and each engine (torch eager on the .safetensors model, ONNX Runtime and OpenVINO on
# its artefacts) and each batch size (1 and 8), one fresh process of latency.py: ms per image and
# the process's peak RSS (VmHWM). Each process holds the shared measurement lock. One JSON line per
# process into $RESULTS (default benchmarks/deployment/results.jsonl, replaced), then the table.
#
#   bash benchmarks/deployment/measure.sh                      # models from runs/deployment
#   WORK=PATH/runs/deployment bash benchmarks/deployment/measure.sh   # models prepared elsewhere
#   LIMIT=8 MODELS=padim RESULTS=runs/smoke.jsonl bash benchmarks/deployment/measure.sh   # smoke
# shared set-up: strict mode, the repository root, PYTHON, OMP_NUM_THREADS=2 and OMP_WAIT_POLICY=PASSIVE
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
DATA=${DATA:-../shared/data/mvtec_bottle/bottle}
WORK=${WORK:-runs/deployment}
RESULTS=${RESULTS:-benchmarks/deployment/results.jsonl}
MODELS=${MODELS:-padim patchcore efficientad vanilla_ae}
BATCHES=${BATCHES:-1 8}
LIMIT=${LIMIT:-64}
LOCK=${ADCORE_BENCH_LOCK:-/tmp/adcore-bench.lock}

for model in $MODELS; do
    for need in "$WORK/$model.safetensors" "$WORK/$model"/{onnx,openvino}/adcore-export.json; do
        [ -f "$need" ] || { echo "missing $need: run benchmarks/deployment/prepare.sh first (WORK=$WORK)" >&2; exit 2; }
    done
done
: > "$RESULTS"
started=$(date +%s)
for model in $MODELS; do
    for engine in torch onnx openvino; do
        target=(--artefact "$WORK/$model/$engine")
        [ "$engine" = torch ] && target=(--model "$WORK/$model.safetensors")
        for batch in $BATCHES; do
            # a failing process is recorded and the others still run (the quiet window is not rerun lightly)
            if ! flock "$LOCK" $PYTHON benchmarks/deployment/latency.py --engine "$engine" "${target[@]}" \
                    --images "$DATA/test" --limit "$LIMIT" --batch "$batch" --label "$model" >> "$RESULTS"; then
                printf '{"label": "%s", "engine": "%s", "batch": %s, "error": "latency.py failed, see stderr"}\n' \
                    "$model" "$engine" "$batch" >> "$RESULTS"
            fi
            tail -n 1 "$RESULTS" >&2
        done
    done
done
echo "measured in $(( $(date +%s) - started )) s; results in $RESULTS" >&2
$PYTHON - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
failed = [r for r in rows if "error" in r]
rows = [r for r in rows if "error" not in r]
base = {(r["label"], r["batch"]): r for r in rows if r["engine"] == "torch"}
print("| detector | engine | batch | ms/image (median) | x torch | peak RSS (MB) | x torch | torch imported |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for r in rows:
    b = base.get((r["label"], r["batch"]))
    lat = f'{r["ms_per_image_median"] / b["ms_per_image_median"]:.2f}' if b else "-"
    rss = f'{r["peak_rss_mb"] / b["peak_rss_mb"]:.2f}' if b else "-"
    print(f'| {r["label"]} | {r["engine"]} | {r["batch"]} | {r["ms_per_image_median"]:.1f} | {lat} | '
          f'{r["peak_rss_mb"]:.0f} | {rss} | {"yes" if r["torch_imported"] else "no"} |')
for r in failed:
    print(f'FAILED: {r["label"]} {r["engine"]} batch {r["batch"]}', file=sys.stderr)
sys.exit(1 if failed else 0)
EOF
