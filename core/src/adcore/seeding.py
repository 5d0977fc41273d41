"""Reproducibility: one context manager that seeds every RNG a detector may touch."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["seeded", "set_deterministic"]


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed Python, NumPy and torch for the block, restoring the previous RNG states after it."""
    if seed is None:
        yield
        return
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def set_deterministic(enabled: bool = True) -> None:
    """Switch torch to deterministic algorithms (the CLI does this when ``ADCORE_DETERMINISTIC=1``).

    CPU kernels used by adcore are deterministic already; this matters on GPUs, where it may be
    slower and raises for operations without a deterministic implementation.
    """
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
