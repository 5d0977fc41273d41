#!/usr/bin/env bash
# Installed size of the full environment (every package of the python that runs it: its
# site-packages and its whole prefix, by du in MB of 10^6 bytes, as runtime/tests/test_wheel.py counts)
# as one JSON line on stdout. The lean runtime's environment is measured by
# runtime/tests/test_wheel.py (a fresh venv with the built wheel; python -m pytest runtime/tests -m
# packaging -s prints it). Sizes, not timings: no quiet machine needed.
set -euo pipefail
PY=${PYTHON:-python}
site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mb() { du -sk "$1" | awk '{printf "%.0f", $1 * 1024 / 1e6}'; }
prefix=$($PY -c 'import sys; print(sys.prefix)')
printf '{"label": "full environment", "site_packages_mb": %s, "environment_mb": %s, "python": "%s"}\n' \
    "$(mb "$site")" "$(mb "$prefix")" "$($PY -c 'import platform; print(platform.python_version())')"
