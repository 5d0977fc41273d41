"""faiss is imported with OpenBLAS kernels this CPU can run, and the user's own choice wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ad_memory.faiss_loader import openblas_coretype

INTEL_AVX512 = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse3 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl\n"
INTEL_AVX2 = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse3 avx avx2 fma\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (INTEL_AVX512, "SkylakeX"),
    (INTEL_AVX2, "Haswell"),
    ("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse3 avx avx512f\n", None),  # neither family's full set
    ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse3 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl\n", None),
    ("", None),
    # only the first processor's lines count (every processor repeats them)
    (INTEL_AVX2 + "\n" + INTEL_AVX512, "Haswell"),
])
def test_coretype_follows_vendor_and_instruction_sets(cpuinfo: str, expected: str | None) -> None:
    assert openblas_coretype(cpuinfo) == expected


_PROBE = """
import ctypes, json, os
import torch
from ad_memory.memory_bank import knn
knn(torch.randn(4, 3), torch.randn(6, 3), 1)  # the detectors' first search imports faiss
paths = sorted({line.split()[-1] for line in open("/proc/self/maps")
                if "openblas" in line.lower() and "faiss" in line.lower()})
core = None
if paths:
    lib = ctypes.CDLL(paths[0])
    lib.openblas_get_corename.restype = ctypes.c_char_p
    core = lib.openblas_get_corename().decode()
print(json.dumps({"core": core, "env": os.environ.get("OPENBLAS_CORETYPE")}))
"""


def _probe(**env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"} | env
    done = subprocess.run([sys.executable, "-c", _PROBE], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _this_cpu() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    return openblas_coretype(cpuinfo.read_text()) if cpuinfo.is_file() else None


@pytest.mark.skipif(_this_cpu() is None, reason="needs Linux on an Intel CPU with AVX2 or AVX-512")
def test_faiss_openblas_runs_this_cpus_kernels_and_the_variable_is_put_back() -> None:
    result = _probe()
    if result["core"] is None:
        pytest.skip("this faiss build bundles no OpenBLAS of its own")
    assert result["core"] != "Prescott", "faiss' OpenBLAS fell back to its SSE3 kernels"
    assert result["core"] == _this_cpu()
    assert result["env"] is None  # a BLAS loaded later detects the CPU itself


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux")
def test_the_users_openblas_coretype_wins() -> None:
    result = _probe(OPENBLAS_CORETYPE="Haswell")
    if result["core"] is None:
        pytest.skip("this faiss build bundles no OpenBLAS of its own")
    assert result == {"core": "Haswell", "env": "Haswell"}
