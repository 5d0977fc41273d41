"""The OpenVINO backend (the ``openvino`` extra): an ONNX artefact and an OpenVINO IR artefact give
ONNX Runtime's numbers. Skipped where OpenVINO is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adcore_runtime import InvalidInputError, Runtime

openvino = pytest.importorskip("openvino")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.integers(0, 256, (45, 70, 3), dtype=np.uint8) for _ in range(3)]


def _assert_close(got, expected):
    np.testing.assert_allclose(got.pred_score, expected.pred_score, rtol=1e-4)
    span = float(expected.anomaly_map.max() - expected.anomaly_map.min()) or 1.0
    assert np.abs(got.anomaly_map - expected.anomaly_map).max() / span <= 1e-4
    np.testing.assert_array_equal(got.pred_label, expected.pred_label)


def test_an_onnx_artefact_runs_on_openvino(artefact: Path):
    _assert_close(Runtime(artefact, backend="openvino").predict(_images()), Runtime(artefact).predict(_images()))


def test_an_openvino_ir_artefact(artefact: Path, tmp_path: Path):
    folder = tmp_path / "ir"
    folder.mkdir()
    openvino.save_model(openvino.convert_model(str(artefact / "model.onnx")), str(folder / "model.xml"))
    metadata = json.loads((artefact / "adcore-export.json").read_text())
    metadata.update(artefact="model.xml", runtime="openvino")
    (folder / "adcore-export.json").write_text(json.dumps(metadata))
    runtime = Runtime(folder)
    assert runtime.backend == "openvino"
    _assert_close(runtime.predict(_images()), Runtime(artefact).predict(_images()))
    with pytest.raises(InvalidInputError, match="OpenVINO artefact; use backend='openvino'"):
        Runtime(folder, backend="onnx")


def test_max_batch_splits_openvino_calls_too(tmp_path: Path, make_artefact):
    limited = Runtime(make_artefact(tmp_path / "limited", max_batch=2), backend="openvino")
    calls: list[int] = []
    run = limited._engine.run

    def spy(input_name, batch):
        calls.append(len(batch))
        return run(input_name, batch)

    limited._engine.run = spy
    _assert_close(limited.predict(_images()), Runtime(make_artefact(tmp_path / "any")).predict(_images()))
    assert calls == [2, 1]
