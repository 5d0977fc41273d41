"""What adcore's own processes set before the heavy imports: its CLI, benchmark workers and Ray actors.

A library must not change its caller's process, so nothing here runs on ``import adcore``; each entry
point calls :func:`prepare_process` first thing, before torch or timm is imported.

- ``OMP_WAIT_POLICY=PASSIVE`` (unless set): torch and faiss each bring an OpenMP runtime, and
  busy-waiting threads of one stall the other.
- Triton is left out of a process that has no GPU. timm imports torchvision, whose ``ops`` import
  ``torch._dynamo``, which probes for Triton by importing it: 76 MB of resident memory (its 70 MB
  compiler library and its Python modules) in a CPU process that never compiles a GPU kernel, about
  7 % of a PaDiM run's peak. Marking it absent (``sys.modules["triton"] = None``) makes the probe
  answer "not installed", which is torch's own path for a CPU-only install. On a machine with a GPU
  nothing is changed (torch may back some of its CUDA kernels with Triton); ``ADCORE_TRITON=1``
  keeps it in a CPU process too, e.g. for a plugin that calls ``torch.compile`` for another device.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["prepare_process", "gpu_possible"]

#: device nodes of the GPU drivers torch can use (NVIDIA, AMD ROCm, WSL's GPU bridge)
_GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def prepare_process() -> None:
    """Set up the current process as an adcore command's: call before importing torch or timm."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if _wants_triton() or "triton" in sys.modules or "torchvision" in sys.modules or gpu_possible():
        return  # too late to matter, asked for, or possibly needed
    sys.modules["triton"] = None


def gpu_possible() -> bool:
    """Whether this machine has a GPU driver's device node (without importing torch to ask)."""
    return any(Path(node).exists() for node in _GPU_NODES)


def _wants_triton() -> bool:
    return os.environ.get("ADCORE_TRITON", "").strip().lower() in ("1", "true", "yes")
