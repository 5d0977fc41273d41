"""TorchScript (``model.pt``): the traced graph, metadata as the archive's extra file, run by ``torch.jit``."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from adcore.export.errors import ExportError

__all__ = ["ARTEFACT", "write", "runner"]

ARTEFACT = "model.pt"


def write(module: torch.nn.Module, example: torch.Tensor, folder: Path, outputs: list[str],
          metadata: dict[str, str], opset: int | None = None) -> list[Path]:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (example,), check_trace=False)
    except Exception as exc:  # the tracer raises many kinds
        raise ExportError(f"torch.jit.trace failed for this detector ({type(exc).__name__}: {_first_line(exc)})") from exc
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit deprecated; the format is still read
        torch.jit.save(traced, buffer, _extra_files={"adcore-export.json": json.dumps(metadata, sort_keys=True)})
    path = folder / ARTEFACT
    path.write_bytes(buffer.getvalue())
    return [path]


def runner(folder: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(folder / ARTEFACT), map_location="cpu")

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(torch.from_numpy(images))]

    return run


def _first_line(exc: BaseException) -> str:
    # tracer errors can embed whole tensors: the first line is the reason
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
