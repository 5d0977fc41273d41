"""adcore's own processes leave Triton out when there is no GPU; a library import changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adcore.process import gpu_possible

_PROBE = """
import json, sys
{setup}
import torch, timm
print(json.dumps({{"triton": "triton" in sys.modules and sys.modules["triton"] is not None,
                   "omp": __import__("os").environ.get("OMP_WAIT_POLICY")}}))
"""


def _probe(setup: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("ADCORE_TRITON", "OMP_WAIT_POLICY")}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup)], env=environment, check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _triton_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(gpu_possible() or not _triton_installed(), reason="needs a CPU-only machine with triton installed")
def test_prepared_process_has_no_triton_and_a_plain_import_keeps_it():
    prepared = _probe("from adcore.process import prepare_process; prepare_process()")
    assert prepared == {"triton": False, "omp": "PASSIVE"}
    # importing adcore (a library use) changes nothing in the caller's process
    assert _probe("import adcore, adcore.backbones")["triton"] is True
    # asked for explicitly, it stays
    assert _probe("from adcore.process import prepare_process; prepare_process()", ADCORE_TRITON="1")["triton"] is True


def test_prepare_process_keeps_a_chosen_openmp_policy_and_an_imported_triton(monkeypatch):
    from adcore import process

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    sentinel = object()
    monkeypatch.setitem(sys.modules, "triton", sentinel)
    process.prepare_process()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert sys.modules["triton"] is sentinel  # already imported: never replaced
