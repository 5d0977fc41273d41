"""OpenVINO IR (``model.xml`` + ``model.bin``): converted from the ONNX graph, run by OpenVINO's runtime.

Metadata goes into the IR's ``rt_info`` under ``adcore``; the runtime is asked for f32 inference
(``INFERENCE_PRECISION_HINT``) because CPUs with bf16/fp16 units otherwise lower the precision and
the parity check would fail for reasons that have nothing to do with the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from adcore.export import onnx as onnx_format
from adcore.export.errors import ExportDependencyError

__all__ = ["ARTEFACT", "write", "runner"]

ARTEFACT = "model.xml"


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ExportDependencyError(f"exporting to OpenVINO needs the 'openvino' package: pip install 'adcore[export]' "
                                    f"({exc})") from exc
    return openvino


def write(module: torch.nn.Module, example: torch.Tensor, folder: Path, outputs: list[str],
          metadata: dict[str, str], opset: int | None = None) -> list[Path]:
    ov = _openvino()
    source = folder / "graph.onnx"
    source.write_bytes(onnx_format.export_bytes(module, example, outputs, metadata, opset))
    model = ov.convert_model(str(source))
    source.unlink()
    for key, value in metadata.items():
        model.set_rt_info(value, ["adcore", key])
    xml = folder / ARTEFACT
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


def runner(folder: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    ov = _openvino()
    compiled = ov.Core().compile_model(str(folder / ARTEFACT), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(images: np.ndarray) -> list[np.ndarray]:
        result = compiled(images)
        return [np.asarray(result[output]) for output in compiled.outputs]

    return run
