#!/usr/bin/env bash
# Install everything, then run the whole test suite (core, every plugin, cross-package tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ADCORE_PROGRESS=0
exec .venv/bin/python -m pytest "$@"
