#!/usr/bin/env bash
# Issue 15 on a GPU machine, about 10 minutes end to end (docs/devices.md):
#   1. installs (scripts/setup.sh) unless a Python with adcore and torch is already there;
#   2. runs the CUDA tests (pytest -m cuda: the whole conformance kit on cuda for every registered detector);
#   3. every registered detector on bottle at 256 px on CUDA: fit seconds, ms per image, AUROC (each
#      card's quick_params, the training-free detectors at their defaults; SWEEP_TRAIN training images);
#   4. EfficientAD-S, STFPM and FastFlow at their papers' budgets on CUDA, as far as each time limit allows;
#   5. step 3 again on the CPU (every core), each run capped at CPU_LIMIT seconds (a timeout still bounds
#      the speed-up);
#   6. a summary table (summarize.py): RESULTS/summary.md.
# Time (H200, 16 cores): tests about 2 min, CUDA sweep about 4, papers at most 8, CPU sweep at most 11.
#
#   bash benchmarks/gpu/run.sh                 # writes $OUT, else benchmarks/gpu/results/
#   bash benchmarks/gpu/run.sh --quick         # CPU smoke of every step: tiny data, tiny budgets, a temp folder
#   bash benchmarks/gpu/run.sh --no-setup      # skip step 1
#
# Environment: ADCORE_DATA (the folder holding mvtec_bottle/; default shared/data or ../shared/data),
# PYTHON, OUT, SWEEP_TRAIN (training images in the sweep, default 60 of bottle's 209), SWEEP_LIMIT and
# CPU_LIMIT (seconds per sweep run on CUDA / CPU, default 60 / 45), EFFICIENTAD_STEPS (default 20000: the
# paper's 70000 take longer than this script's budget), FASTFLOW_EPOCHS (default 500, the paper's).
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=0
SETUP=1
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1; SETUP=0 ;;
    --no-setup) SETUP=0 ;;
    *) echo "run.sh: unknown option $arg (use --quick or --no-setup)" >&2; exit 2 ;;
  esac
done
export ADCORE_PROGRESS=0 OMP_WAIT_POLICY=PASSIVE

if [ -z "${PYTHON:-}" ]; then
  if [ "$SETUP" = 1 ] && ! { [ -x .venv/bin/python ] && .venv/bin/python -c "import adcore, torch" 2>/dev/null; }; then
    bash scripts/setup.sh
  fi
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ "$QUICK" = 1 ]; then
  RESULTS="${OUT:-$(mktemp -d /tmp/adcore-gpu-quick.XXXXXX)}"
else
  RESULTS="${OUT:-benchmarks/gpu/results}"
fi
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
echo "run.sh: results in $RESULTS" >&2
bench() { "$PYTHON" -m adcore.benchmark --no-plots "$@"; }

# -- what this machine is ------------------------------------------------------------------------
{ command -v nvidia-smi >/dev/null && nvidia-smi || echo "no nvidia-smi"; } > "$RESULTS/machine.txt" 2>&1
"$PYTHON" - >> "$RESULTS/machine.txt" <<'EOF'
import os, platform, torch
from adcore.devices import available_devices, device_name, resolve_device
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cpus {os.cpu_count()}, {platform.platform()}")
print("available:", available_devices(), "auto:", resolve_device("auto"), device_name(resolve_device("auto")))
EOF
HAS_CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")

# -- 2. the CUDA tests ---------------------------------------------------------------------------
status=0
timeout "${TEST_LIMIT:-300}" "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider -rs tests/test_devices_registered.py \
  > "$RESULTS/cuda-tests.txt" 2>&1 || status=$?
tail -3 "$RESULTS/cuda-tests.txt" >&2
echo "cuda tests: exit $status" >> "$RESULTS/cuda-tests.txt"

# -- 3. every detector, CUDA against CPU ---------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  DATA="$RESULTS/data"
  "$PYTHON" -c "import sys; from adcore.testing import write_tiny_category; write_tiny_category(sys.argv[1], 'bottle', size=64)" \
    "$DATA/mvtec_bottle"
  SIZE=64
  MODELS=(padim patchcore stfpm)
  SWEEP=(--quick --max-train 6)
else
  DATA="${ADCORE_DATA:-}"
  if [ -z "$DATA" ]; then
    if [ -d shared/data ]; then DATA=shared/data; else DATA=../shared/data; fi
  fi
  SIZE=256
  MODELS=(all)
  # card quick_params for the trained detectors; the training-free ones at their defaults (PatchCore's
  # fit is the issue's >= 10x target)
  SWEEP=(--quick --max-train "${SWEEP_TRAIN:-60}" -p padim.num_features=100 -p patchcore.coreset_ratio=0.1)
fi
DATASET=(--data-root "$DATA" --dataset mvtec_bottle:bottle --input-size "$SIZE")
if [ "$HAS_CUDA" = 1 ]; then
  bench -m "${MODELS[@]}" "${DATASET[@]}" "${SWEEP[@]}" --device cuda --workers 4 \
    --time-limit "${SWEEP_LIMIT:-60}" --out "$RESULTS/cuda" || true
fi

# -- 4. the papers' budgets on CUDA --------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  PAPERS=(-m stfpm fastflow efficientad --quick --max-train 6 -p stfpm.epochs=1 -p fastflow.epochs=1
          -p efficientad.train_steps=2 --time-limit 120)  # a smoke: --workers 4 on 2 cores warns, and works
  PAPER_DEVICE=cpu
else
  # STFPM: 100 epochs (its defaults); FastFlow: 500 epochs; EfficientAD-S: 70000 steps in the paper
  PAPERS=(-m stfpm fastflow efficientad -p "fastflow.epochs=${FASTFLOW_EPOCHS:-500}"
          -p "efficientad.train_steps=${EFFICIENTAD_STEPS:-20000}" --time-limit stfpm=120 fastflow=120 efficientad=240)
  PAPER_DEVICE=cuda
fi
if [ "$HAS_CUDA" = 1 ] || [ "$QUICK" = 1 ]; then
  bench "${PAPERS[@]}" "${DATASET[@]}" --device "$PAPER_DEVICE" --workers 4 --out "$RESULTS/papers" || true
fi

# -- 5. the sweep on the CPU -----------------------------------------------------------------------
bench -m "${MODELS[@]}" "${DATASET[@]}" "${SWEEP[@]}" --device cpu --time-limit "${CPU_LIMIT:-45}" \
  --out "$RESULTS/cpu" || true

# -- 6. the summary ------------------------------------------------------------------------------
"$PYTHON" benchmarks/gpu/summarize.py "$RESULTS"
exit "$status"
