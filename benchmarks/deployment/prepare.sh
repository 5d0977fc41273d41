#!/usr/bin/env bash
# PREPARE step of the deployment benchmark (docs/deployment.md, "Benchmarks"): not timed, so it runs
# niced and without the measurement lock, any time before measure.sh.
#
# Trains PaDiM, PatchCore, EfficientAD and the vanilla autoencoder on MVTec bottle at 256 px and
# exports each to ONNX and OpenVINO with adcore export's parity check (generated images plus 16 of
# bottle's training images, which `adcore train` records in the model file). Everything goes to
# $WORK (default runs/deployment, gitignored); models and artefacts already there are reused.
#
# Budgets: PaDiM and PatchCore at their defaults (PatchCore's memory bank, hence its search cost,
# depends on the data). The autoencoder at the budget of benchmarks/ad-recon/config.json (16 base
# channels, 12 epochs, batch 8, lr 2e-3) at input_size 256. EfficientAD at the networks of
# benchmarks/ad-distill/config.json (PDN-S at width 0.25, 64 teacher channels, lr 1e-3) but only 4
# teacher and 8 student steps (EFFICIENTAD_TEACHER_STEPS / EFFICIENTAD_STEPS; at ~2.6 s per student
# step on the 2 cores at 256 px, docs/ad-distill.md, the config's 110 are ~5 min of both cores, over
# an hour on the loaded machine; its defaults 10,000 + 70,000 take hours): the latency depends on the
# networks' width, which is kept, not on the number of steps, so that model is for timing only.
#
#   bash benchmarks/deployment/prepare.sh                  # bottle, 256 px, into runs/deployment
#   WORK=/tmp/x DATA=... INPUT_SIZE=64 bash benchmarks/deployment/prepare.sh   # smoke
# shared set-up: strict mode, the repository root, PYTHON, OMP_NUM_THREADS=2 and OMP_WAIT_POLICY=PASSIVE
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
DATA=${DATA:-../shared/data/mvtec_bottle/bottle}
WORK=${WORK:-runs/deployment}
SIZE=${INPUT_SIZE:-256}
MODELS=${MODELS:-padim patchcore efficientad vanilla_ae}

params() {  # the -p arguments of one model (see the header for where they come from)
    case "$1" in
        efficientad) echo "-p width=0.25 -p teacher_channels=64 -p teacher_steps=${EFFICIENTAD_TEACHER_STEPS:-4}" \
                          "-p teacher_batch_size=8 -p teacher_learning_rate=0.001" \
                          "-p train_steps=${EFFICIENTAD_STEPS:-8} -p batch_size=4 -p learning_rate=0.001 -p use_cache=false" ;;
        vanilla_ae) echo "-p base_channels=16 -p batch_size=8 -p learning_rate=0.002 -p epochs=12" ;;
        *) echo "" ;;
    esac
}

mkdir -p "$WORK"
for model in $MODELS; do
    file="$WORK/$model.safetensors"
    if [ ! -f "$file" ]; then
        echo "== train $model ($(date -u +%H:%M:%S))" >&2
        # shellcheck disable=SC2046 # params is a list of words
        nice -n 10 $PYTHON -m adcore.cli train "$model" "$DATA" -p input_size="$SIZE" $(params "$model") --out "$file"
    fi
    for format in onnx openvino; do
        if [ ! -f "$WORK/$model/$format/adcore-export.json" ]; then
            echo "== export $model $format ($(date -u +%H:%M:%S))" >&2
            nice -n 10 $PYTHON -m adcore.cli export "$file" --format "$format" --out "$WORK/$model/$format"
        fi
    done
done
echo "prepared in $WORK: $(ls "$WORK" | tr '\n' ' ')" >&2
