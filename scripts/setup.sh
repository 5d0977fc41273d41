#!/usr/bin/env bash
# Create .venv and install adcore (with its export extra), every first-party plugin (editable) and the test tools.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@"; }
# torch first and pinned: on this machine pip takes these wheels from local disk
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || pip_install "torch==2.14.1" "torchvision==0.29.1"
# core with its export extra (onnx, onnxruntime, openvino): CI checks every export's parity; its serve
# extra (fastapi, uvicorn, python-multipart) for adcore serve; its ray extra (ray[data]: the scale-out
# tests run on a local Ray); adcore-runtime (numpy, pillow, onnxruntime: no torch) beside it
pip_install -e "./core[export,serve,ray]" -e ./plugins/ad-memory -e ./plugins/ad-stat -e ./plugins/ad-flow \
    -e ./plugins/ad-distill -e ./plugins/ad-recon -e ./runtime
# the third-party template, installed as a regular (non-editable) distribution like any outside plugin
pip_install ./examples/ad-example
# playwright drives the system chromium in adcore serve's browser test (no browser download: .ci/run installs chromium)
pip_install "pytest>=8" "hypothesis>=6" "scikit-learn>=1.3" "build>=1" "hatchling>=1.25" "httpx>=0.27" "playwright>=1.40"
