"""Importing faiss with runtime settings that only take effect while its libraries load.

faiss-cpu wheels bundle their own OpenMP runtime and an OpenMP OpenBLAS (0.3.15 in faiss-cpu
1.15.1) beside torch's. Both read their settings from the environment once, when the library is
loaded, so :func:`import_faiss` sets them just before the first ``import faiss``:

* ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose a policy): two OpenMP runtimes whose idle
  threads busy-wait steal the few cores from each other; on a 2-core machine the backbone forward
  after a faiss search ran up to 20x slower.
* ``OPENBLAS_CORETYPE`` for the load only (unless the user set it), on Intel CPUs with AVX-512 or
  AVX2: OpenBLAS picks its kernels by the CPU's model number, and a release older than the CPU
  does not know it and falls back to its SSE3 kernels ("Prescott"). On this project's Intel Xeon VM
  (AVX-512 FP16: Sapphire Rapids or newer) the bundled 0.3.15 did exactly that and faiss' exact search of PatchCore's bank (1,024 × 21,402 ×
  152) took 161–230 ms instead of 41–53 ms with the AVX-512 kernels it ships (docs/ad-memory.md).
  The kernel family named here is the one that release picks for the Intel models it does know
  with the same instruction sets, so on those nothing changes. The variable is put back after the
  import so that a BLAS loaded later (scipy's) detects the CPU itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ["import_faiss", "openblas_coretype"]

#: instruction sets OpenBLAS' "SkylakeX" kernels need (its AVX-512 family)
_AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
#: instruction sets its "Haswell" kernels need
_AVX2 = frozenset({"avx2", "fma"})


def openblas_coretype(cpuinfo: str) -> str | None:
    """The OpenBLAS kernel family for the CPU described by ``cpuinfo`` (the text of Linux'
    ``/proc/cpuinfo``): ``"SkylakeX"`` for an Intel CPU with AVX-512, ``"Haswell"`` for one with
    AVX2 and FMA, ``None`` otherwise (other vendors, whose detection does not depend on the model
    list in the same way, are left to OpenBLAS)."""
    vendor, flags = "", frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    if vendor != "GenuineIntel":
        return None
    if _AVX512 <= flags:
        return "SkylakeX"
    if _AVX2 <= flags:
        return "Haswell"
    return None


@contextlib.contextmanager
def _openblas_kernels_named() -> Iterator[None]:
    """``OPENBLAS_CORETYPE`` set for this CPU while the block runs (unless the user set it)."""
    cpuinfo = Path("/proc/cpuinfo")
    coretype = None
    if "OPENBLAS_CORETYPE" not in os.environ and sys.platform.startswith("linux") and cpuinfo.is_file():
        coretype = openblas_coretype(cpuinfo.read_text(errors="replace"))
    if coretype is None:
        yield
        return
    os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)


def import_faiss() -> ModuleType:
    """``faiss``, its bundled runtimes loaded with the settings above on the first call."""
    if "faiss" in sys.modules:
        return sys.modules["faiss"]
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with _openblas_kernels_named():
        import faiss
    return faiss
