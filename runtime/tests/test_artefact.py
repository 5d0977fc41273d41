"""Reading artefacts: the sidecar, the ONNX metadata, and the errors a person can act on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adcore_runtime import ArtefactError, read_artefact


def test_sidecar_is_read(artefact: Path):
    found = read_artefact(artefact)
    assert found.graph == artefact / "model.onnx"
    assert found.runtime == "onnx" and found.detector == "toy"
    assert found.input_size == (32, 48) and found.input_name == "images"
    assert found.threshold == 0.2 and found.score_scale == 0.05
    assert found.pixel_threshold == 0.25 and found.pixel_scale == 0.05
    assert found.outputs == ("pred_score", "anomaly_map", "normalized_score")
    assert read_artefact(artefact / "model.onnx") == found  # the .onnx beside its sidecar
    assert read_artefact(artefact / "adcore-export.json") == found


def test_onnx_metadata_props_without_sidecar(tmp_path: Path, make_artefact):
    folder = make_artefact(tmp_path / "bare", sidecar=False, metadata_props=True, threshold=0.3)
    found = read_artefact(folder / "model.onnx")
    assert found.threshold == 0.3 and found.input_size == (32, 48) and found.pixel_threshold == 0.25
    with pytest.raises(ArtefactError, match="has no adcore-export.json"):
        read_artefact(folder)  # the folder form needs its sidecar


def test_onnx_without_adcore_metadata_is_refused(tmp_path: Path, make_artefact):
    folder = make_artefact(tmp_path / "plain", sidecar=False)
    with pytest.raises(ArtefactError, match="not an adcore export"):
        read_artefact(folder / "model.onnx")


def _rewrite(folder: Path, changes: dict) -> Path:
    sidecar = folder / "adcore-export.json"
    metadata = json.loads(sidecar.read_text())
    metadata.update(changes)
    sidecar.write_text(json.dumps(metadata))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 2}, r"format_version 2, newer than this adcore-runtime reads \(up to 1\); upgrade"),
    ({"format": "something-else"}, "is not an adcore export"),
    ({"runtime": "torchscript"}, "TorchScript export, which needs torch"),
    ({"artefact": "missing.onnx"}, "missing.onnx.*is missing; copy the whole export folder"),
    ({"input_size": [32]}, r"input_size must be \[height, width\]"),
    ({"score_scale": -1.0}, "score_scale must be a positive number or null"),
    ({"tiling": {"tile_size": 64, "tile_overlap": 1.5, "tile_input_size": None}}, r"tile_overlap 1.5 is not in \[0, 1\)"),
    ({"tiling": {"tile_overlap": 0.25}}, "tiling must be"),
    ({"max_batch": 0}, "max_batch must be a positive integer or null, got 0"),
    ({"max_batch": "8"}, "max_batch must be a positive integer or null, got '8'"),
    ({"max_batch": True}, "max_batch must be a positive integer or null, got True"),
])
def test_bad_sidecars_say_what_is_wrong(artefact: Path, changes, message):
    with pytest.raises(ArtefactError, match=message):
        read_artefact(_rewrite(artefact, changes))


def test_tiling_is_read(artefact: Path):
    from adcore_runtime.artefact import Tiling

    found = read_artefact(_rewrite(artefact, {"tiling": {"tile_size": 40, "tile_overlap": 0.25, "tile_input_size": [90, 120]}}))
    assert found.tiling == Tiling((40, 40), 0.25, (90, 120))
    assert read_artefact(_rewrite(artefact, {"tiling": None})).tiling is None


def test_max_batch_is_read_and_optional(artefact: Path, tmp_path: Path, make_artefact):
    assert "max_batch" not in json.loads((artefact / "adcore-export.json").read_text())
    assert read_artefact(artefact).max_batch is None  # a sidecar from before the key: any batch
    assert read_artefact(_rewrite(artefact, {"max_batch": 2})).max_batch == 2
    assert read_artefact(_rewrite(artefact, {"max_batch": None})).max_batch is None
    bare = make_artefact(tmp_path / "bare", sidecar=False, metadata_props=True, max_batch=1)
    assert read_artefact(bare / "model.onnx").max_batch == 1  # metadata_props carry it as JSON text


def test_wrong_files(tmp_path: Path):
    with pytest.raises(ArtefactError, match="does not exist"):
        read_artefact(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtefactError, match="has no adcore-export.json"):
        read_artefact(tmp_path / "empty")
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    with pytest.raises(ArtefactError, match="adcore model file, not an exported artefact; export it first"):
        read_artefact(model)
    broken = tmp_path / "broken" / "adcore-export.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    with pytest.raises(ArtefactError, match="cannot read"):
        read_artefact(broken.parent)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ArtefactError, match="not a readable ONNX model"):
        read_artefact(garbage)


def test_errors_keep_their_standard_bases():
    from adcore_runtime import AdcoreRuntimeError, BackendError, ImageLoadError, InvalidInputError

    assert issubclass(ArtefactError, ValueError) and issubclass(ImageLoadError, ValueError)
    assert issubclass(InvalidInputError, ValueError) and issubclass(BackendError, RuntimeError)
    assert all(issubclass(e, AdcoreRuntimeError) for e in (ArtefactError, ImageLoadError, InvalidInputError,
                                                            BackendError))
