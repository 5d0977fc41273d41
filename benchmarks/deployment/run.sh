#!/usr/bin/env bash
# The whole deployment benchmark (docs/deployment.md, "Benchmarks"): prepare.sh (train and export,
# niced, no lock, reused when already done) and then measure.sh (the timed step, each process under
# the shared measurement lock; run it on an otherwise idle machine), then the installed size of the
# full environment. The two steps run separately too: prepare any time, measure in a quiet window.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash benchmarks/deployment/prepare.sh
bash benchmarks/deployment/measure.sh
bash benchmarks/deployment/install_size.sh
