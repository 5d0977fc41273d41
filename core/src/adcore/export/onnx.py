"""ONNX: the graph through torch's exporter, metadata in ``metadata_props``, run by ONNX Runtime.

The TorchScript-based exporter (``dynamo=False``) is used: it needs only the ``onnx`` package (not
onnxscript), it keeps the batch axis symbolic through ``dynamic_axes`` for these conv/matmul
graphs, and the parity check (run at another batch size than the trace) catches any detector whose
graph would silently bake in the traced batch size.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adcore.export.errors import ExportDependencyError, ExportError

__all__ = ["ARTEFACT", "DEFAULT_OPSET", "export_bytes", "write", "runner", "add_metadata"]

ARTEFACT = "model.onnx"
DEFAULT_OPSET = 17


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportDependencyError(f"exporting to ONNX needs the {module!r} package: pip install 'adcore[export]' "
                                    f"({exc})") from exc


def export_bytes(module: torch.nn.Module, example: torch.Tensor, outputs: list[str], metadata: dict[str, str],
                 opset: int | None = None) -> bytes:
    """The serialised ONNX model of ``module`` traced on ``example``, with ``metadata`` in its props."""
    onnx = _require("onnx")
    buffer = io.BytesIO()
    axes = {"images": {0: "N"}, **{name: {0: "N"} for name in outputs}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's to act on
            torch.onnx.export(module, (example,), buffer, input_names=["images"], output_names=outputs,
                              dynamic_axes=axes, opset_version=opset or DEFAULT_OPSET, dynamo=False,
                              do_constant_folding=True)
    except Exception as exc:  # the exporter raises many kinds; the user needs the detector and the reason
        raise ExportError(f"torch.onnx.export failed for this detector ({type(exc).__name__}: {_first_line(exc)})") from exc
    model = onnx.load_from_string(buffer.getvalue())
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "adcore"
    return model.SerializeToString()


def write(module: torch.nn.Module, example: torch.Tensor, folder: Path, outputs: list[str],
          metadata: dict[str, str], opset: int | None = None) -> list[Path]:
    path = folder / ARTEFACT
    path.write_bytes(export_bytes(module, example, outputs, metadata, opset))
    return [path]


def runner(folder: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """ONNX Runtime on the CPU, one thread pool per session."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(folder / ARTEFACT), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})


def add_metadata(folder: Path, metadata: dict[str, str]) -> None:
    """Add (or replace) ``metadata_props`` entries of the model in ``folder``; the graph is unchanged."""
    onnx = _require("onnx")
    path = folder / ARTEFACT
    model = onnx.load_from_string(path.read_bytes())
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())


def _first_line(exc: BaseException) -> str:
    # tracer errors can embed whole tensors: the first line is the reason
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
