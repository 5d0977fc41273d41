"""adcore.export: Contract C artefacts, the parity check that guards them, BaseDetector.export, ``adcore export``."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adcore.base import BaseDetector
from adcore.export import (SIDECAR, NotExportableError, ParityError, Tolerance, export_detector)
from adcore.ops import gaussian_blur
from adcore.testing import make_normal_images, paste_defects

onnx = pytest.importorskip("onnx", reason="adcore[export] (onnx) is not installed")
ort = pytest.importorskip("onnxruntime", reason="adcore[export] (onnxruntime) is not installed")


class TinyConv(BaseDetector):
    """Normalisation, a conv, a half-resolution map upsampled and blurred: what real detectors do, in 1 ms."""

    def __init__(self, input_size: int = 32, seed: int = 0) -> None:
        self.input_size = input_size
        self.seed = seed

    def _fit(self, stream) -> None:
        self.net_ = nn.Conv2d(3, 4, 3, padding=1)
        features = torch.cat([self.net_((batch - 0.5) / 0.25) for batch in stream])
        self.mean_ = features.mean((0, 2, 3)).detach()

    def _predict(self, images):
        features = self.net_((images - 0.5) / 0.25)
        distance = ((features - self.mean_[None, :, None, None]) ** 2).sum(1, keepdim=True)
        maps = gaussian_blur(F.avg_pool2d(distance, 2)[:, 0], 1.0)
        return maps.amax((1, 2)), maps


class Refuses(TinyConv):
    export_refusal = "its map needs input gradients at test time"


@pytest.fixture(scope="module")
def tiny():
    return TinyConv().fit(make_normal_images(4, (32, 32)))


def test_onnx_artefact_holds_contract_c_and_matches_torch(tiny, tmp_path):
    sidecar = export_detector(tiny, tmp_path)
    on_disk = json.loads((tmp_path / SIDECAR).read_text())
    assert on_disk == sidecar
    assert sidecar["format"] == "adcore-export" and sidecar["format_version"] == 1
    assert sidecar["artefact"] == "model.onnx" and sidecar["runtime"] == "onnx"
    assert sidecar["input_size"] == [32, 32] and sidecar["outputs"] == ["pred_score", "anomaly_map"]
    assert sidecar["threshold"] is None and sidecar["score_scale"] is None and sidecar["tiling"] is None
    assert sidecar["input"] == {"name": "images", "dtype": "float32", "layout": "NCHW", "range": [0, 1]}
    assert sidecar["parity"]["images"] == 6
    assert sidecar["parity"]["max_score_rel_diff"] <= 1e-4 and sidecar["parity"]["max_map_diff_over_range"] <= 1e-3
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["detector"] == sidecar["detector"] and props["runtime"] == "onnx"
    assert json.loads(props["input_size"]) == [32, 32] and json.loads(props["parity"]) == sidecar["parity"]
    assert sidecar["max_batch"] is None and json.loads(props["max_batch"]) is None  # any batch
    # any batch size, the torch numbers
    images, _ = paste_defects(make_normal_images(3, (32, 32), seed=5))
    score, amap = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"images": images.numpy()})
    prediction = tiny.predict(images)
    np.testing.assert_allclose(score, prediction.pred_score.numpy(), rtol=1e-5)
    np.testing.assert_allclose(amap, prediction.anomaly_map.numpy(), rtol=1e-4, atol=1e-6)


def test_calibrated_detector_outputs_the_normalized_score(tmp_path):
    detector = TinyConv().fit(make_normal_images(4, (32, 32)))
    score = float(detector.predict(make_normal_images(1, (32, 32), seed=3)).pred_score[0])
    detector.threshold_, detector.score_scale_ = score, 0.5 * abs(score) + 1e-3
    sidecar = detector.export(tmp_path)  # BaseDetector.export, through adcore.lookups
    assert sidecar["outputs"] == ["pred_score", "anomaly_map", "normalized_score"]
    assert sidecar["threshold"] == score and sidecar["score_scale"] == detector.score_scale_
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    raw, _, normalized = session.run(None, {"images": make_normal_images(1, (32, 32), seed=3).numpy()})
    assert normalized[0] == pytest.approx(0.5, abs=1e-5)  # exactly at the threshold
    expected = 1 / (1 + math.exp(-(float(raw[0]) - score) / detector.score_scale_))
    assert normalized[0] == pytest.approx(expected, abs=1e-6)


def test_parity_failure_writes_nothing(tiny, tmp_path):
    out = tmp_path / "deploy"
    with pytest.raises(ParityError, match="nothing was written"):
        export_detector(tiny, out, tolerance=Tolerance(score_rel=-1.0))
    assert not out.exists() or not any(out.iterdir())


class Bounded(TinyConv):
    export_max_batch = 2


def test_export_max_batch_goes_into_the_sidecar_and_the_graph(tmp_path):
    detector = Bounded().fit(make_normal_images(4, (32, 32)))
    sidecar = export_detector(detector, tmp_path / "onnx")
    assert sidecar["max_batch"] == 2
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "onnx" / "model.onnx")).metadata_props}
    assert json.loads(props["max_batch"]) == 2
    # the parity check still ran the graph on all 6 images at once: it must be right at any batch
    assert sidecar["parity"]["images"] == 6
    extra = {"adcore-export.json": ""}
    assert export_detector(detector, tmp_path / "ts", format="torchscript")["max_batch"] == 2
    torch.jit.load(str(tmp_path / "ts" / "model.pt"), _extra_files=extra)
    assert json.loads(json.loads(extra["adcore-export.json"])["max_batch"]) == 2  # its values are strings too
    if importlib.util.find_spec("openvino") is not None:  # the IR's rt_info under "adcore"
        import openvino

        assert export_detector(detector, tmp_path / "ov", format="openvino")["max_batch"] == 2
        model = openvino.Core().read_model(str(tmp_path / "ov" / "model.xml"))
        assert json.loads(model.get_rt_info(["adcore", "max_batch"]).astype(str)) == 2


@pytest.mark.parametrize("bad", [0, "2", True])
def test_a_bad_export_max_batch_is_refused(tmp_path, bad):
    detector = TinyConv().fit(make_normal_images(2, (32, 32)))
    detector.export_max_batch = bad
    with pytest.raises(NotExportableError, match="export_max_batch must be a positive integer or None"):
        export_detector(detector, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_detector_that_cannot_export_says_why(tmp_path):
    detector = Refuses().fit(make_normal_images(2, (32, 32)))
    with pytest.raises(NotExportableError, match="input gradients"):
        detector.export(tmp_path)
    assert not any(tmp_path.iterdir())


def test_torchscript_artefact(tiny, tmp_path):
    sidecar = export_detector(tiny, tmp_path, format="torchscript")
    assert sidecar["artefact"] == "model.pt" and (tmp_path / "model.pt").is_file()
    extra = {"adcore-export.json": ""}
    module = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert json.loads(extra["adcore-export.json"])["detector"] == sidecar["detector"]
    images = make_normal_images(2, (32, 32), seed=9)
    torch.testing.assert_close(module(images)[0], tiny.predict(images).pred_score, rtol=1e-5, atol=1e-7)


def test_openvino_artefact(tiny, tmp_path):
    pytest.importorskip("openvino", reason="adcore[export] (openvino) is not installed")
    sidecar = export_detector(tiny, tmp_path, format="openvino")
    assert sidecar["artefact"] == "model.xml" and (tmp_path / "model.bin").is_file()
    assert sidecar["parity"]["max_score_rel_diff"] <= 1e-4


def test_check_images_from_a_folder(tiny, tmp_path):
    from PIL import Image

    folder = tmp_path / "check"
    folder.mkdir()
    for index, image in enumerate(make_normal_images(2, (48, 40))):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / f"{index}.png")
    sidecar = export_detector(tiny, tmp_path / "out", check=[folder])
    assert sidecar["parity"]["images"] == 2


def test_cli_export(tmp_path, capsys):
    from adcore.cli import main
    from adcore.factory import get_model

    model = tmp_path / "model.safetensors"
    get_model("example_gaussian", input_size=32).fit(make_normal_images(4, (32, 32))).save(model)
    assert main(["export", str(model), "--out", str(tmp_path / "out")]) == 0
    sidecar = json.loads((tmp_path / "out" / SIDECAR).read_text())
    assert sidecar["detector"] == "example_gaussian" and sidecar["distribution"] == "ad-example"
    assert "parity on 6 images" in capsys.readouterr().out
    # beyond the tolerance: exit 1, nothing written
    assert main(["export", str(model), "--out", str(tmp_path / "refused"), "--score-tolerance", "-1"]) == 1
    assert "disagrees with the torch detector" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "model.onnx").exists() and not (tmp_path / "refused" / SIDECAR).exists()


def test_non_finite_output_fails_parity():
    from adcore.export.parity import compare

    images = make_normal_images(2, (32, 32))
    reference = [np.ones(2), np.zeros((2, 32, 32)) + np.arange(32.0)]
    broken = lambda batch: [np.full(len(batch), np.nan, np.float32), np.zeros((len(batch), 32, 32), np.float32)]  # noqa: E731
    parity = compare(reference, broken, images, Tolerance())
    assert not parity["ok"] and parity["max_score_rel_diff"] == math.inf


def test_tiling_detector_exports_its_tile_graph(tmp_path):
    detector = TinyConv(input_size=32).set_params(tile_size=32, tile_overlap=0.25)
    detector.fit(make_normal_images(2, (64, 64)))
    sidecar = export_detector(detector, tmp_path)
    assert sidecar["tiling"] == {"tile_size": 32, "tile_overlap": 0.25, "tile_input_size": None}
    assert sidecar["input_size"] == [32, 32]


def test_normalized_score_is_checked_against_the_graphs_own_raw_score():
    """A steep calibration magnifies a tolerated raw-score difference in the normalised score: that
    passes; a graph whose normalised score is not Contract A's of its own raw score fails."""
    from adcore.export.parity import compare
    from adcore.scoring import normalize_score

    images = make_normal_images(2, (8, 8))
    threshold, scale = 10.0, 1e-3  # the fallback scale of a one-image calibration
    raw = np.array([10.0, 10.001])
    amap = np.zeros((2, 8, 8)) + np.arange(8.0)
    normalize = lambda r: normalize_score(np.asarray(r, np.float64), threshold, scale).astype(np.float64)  # noqa: E731
    reference = [raw, amap, normalize(raw)]

    def graph(shift: float, broken: bool = False):
        def run(batch):
            count = len(batch)
            score = (raw[:count] * (1 + 2e-5)).astype(np.float32)  # within the 1e-4 score tolerance
            normalized = normalize(score) + (0.01 if broken else 0.0)
            return [score, amap[:count].astype(np.float32), normalized.astype(np.float32)]
        return run

    names = ["pred_score", "anomaly_map", "normalized_score"]
    steep = compare(reference, graph(0.0), images, Tolerance(), names, normalize=normalize)
    assert steep["ok"] and steep["max_normalized_abs_diff"] > 1e-4 and steep["max_normalized_graph_error"] <= 1e-6
    wrong = compare(reference, graph(0.0, broken=True), images, Tolerance(), names, normalize=normalize)
    assert not wrong["ok"] and wrong["max_normalized_graph_error"] == pytest.approx(0.01, rel=1e-3)
