#!/usr/bin/env bash
# Release check: build a wheel and an sdist for each of the six distributions, then install only
# adcore + ad-flow from those wheels into a brand-new virtual environment and show `adcore list`
# (the `pip install ad-flow` experience: only the flow detectors, FrEIA but no faiss).
# Usage: bash scripts/check_wheels.sh [PLUGIN]   (default ad-flow)
set -euo pipefail
cd "$(dirname "$0")/.."
PLUGIN=${1:-ad-flow}
OUT=${OUT:-dist}
ENV_DIR=${ENV_DIR:-/tmp/adcore-wheel-check}
rm -rf "$OUT" && mkdir -p "$OUT"
for project in core plugins/ad-memory plugins/ad-stat plugins/ad-flow plugins/ad-distill plugins/ad-recon; do
    .venv/bin/python -m build --sdist --wheel --outdir "$OUT" "$project" >/dev/null
done
ls -1 "$OUT"
rm -rf "$ENV_DIR"
python3 -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check "$OUT"/adcore-*.whl "$OUT"/${PLUGIN//-/_}-*.whl
echo "--- adcore list in a clean environment with adcore + $PLUGIN only:"
"$ENV_DIR/bin/adcore" --strict list
"$ENV_DIR/bin/python" -c "import importlib.util as u; print('faiss installed:', u.find_spec('faiss') is not None, '| FrEIA installed:', u.find_spec('FrEIA') is not None)"
