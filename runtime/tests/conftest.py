"""Tiny artefacts made the way Contract C says ``adcore export`` makes them (no adcore involved).

The graph is a toy detector: the map is the local mean of ``|x - 0.5|`` upsampled to the input size,
the score its maximum, and ``normalized_score`` Contract A's logistic when calibrated.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("adcore_runtime") is None:  # a checkout without `pip install -e runtime`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

INPUT_SIZE = (32, 48)


def _export_graph(path: Path, threshold: float | None, scale: float | None) -> list[str]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import torch.nn.functional as F

    class Toy(torch.nn.Module):
        def forward(self, images):
            deviation = (images - 0.5).abs().mean(1, keepdim=True)
            amap = F.interpolate(F.avg_pool2d(deviation, 4), size=images.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0]
            score = amap.amax(dim=(1, 2))
            if threshold is None or scale is None:
                return score, amap
            return score, amap, torch.sigmoid((score - threshold) / scale)

    outputs = ["pred_score", "anomaly_map"] + ([] if threshold is None or scale is None else ["normalized_score"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Toy(), torch.rand(2, 3, *INPUT_SIZE), str(path), input_names=["images"],
                          output_names=outputs, dynamic_axes={"images": {0: "n"}}, dynamo=False)
    return outputs


def _make_artefact(folder: Path, *, threshold: float | None = 0.2, score_scale: float | None = 0.05,
                  pixel_threshold: float | None = 0.25, pixel_scale: float | None = 0.05, sidecar: bool = True,
                  metadata_props: bool = False, **overrides: Any) -> Path:
    """DIR/model.onnx and DIR/adcore-export.json as Contract C describes them; returns DIR."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs = _export_graph(folder / "model.onnx", threshold, score_scale)
    metadata = {"format": "adcore-export", "format_version": 1, "artefact": "model.onnx", "runtime": "onnx",
                "detector": "toy", "distribution": "toy-dist", "distribution_version": "0.0", "adcore_version": "0.0",
                "input_size": list(INPUT_SIZE),
                "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "range": [0, 1]},
                "outputs": outputs, "threshold": threshold, "score_scale": score_scale,
                "pixel_threshold": pixel_threshold, "pixel_scale": pixel_scale, "tiling": None,
                "parity": {"images": 0, "max_score_rel_diff": 0.0, "max_map_diff_over_range": 0.0, "tolerance": {}}}
    metadata.update(overrides)
    if metadata_props:
        onnx = pytest.importorskip("onnx")
        model = onnx.load(str(folder / "model.onnx"))
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(model, str(folder / "model.onnx"))
    if sidecar:
        (folder / "adcore-export.json").write_text(json.dumps(metadata, indent=2))
    return folder


@pytest.fixture
def make_artefact():
    """The artefact factory: ``make_artefact(folder, threshold=..., sidecar=False, ...)``."""
    return _make_artefact


@pytest.fixture
def artefact(tmp_path: Path) -> Path:
    return _make_artefact(tmp_path / "export")
