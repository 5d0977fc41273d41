"""DifferNet's score-only export: the image score as a graph (its map, an input gradient, cannot be one)."""

from __future__ import annotations

import json

import pytest
import torch

from ad_flow.differnet import DifferNet, _resize_matrices
from adcore.testing import make_normal_images, paste_defects

pytest.importorskip("onnx", reason="adcore[export] (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="adcore[export] (onnxruntime) is not installed")


@pytest.fixture(scope="module")
def calibrated() -> DifferNet:
    # real transforms (rotation, jitter) and three scales: everything the graph has to reproduce
    detector = DifferNet(input_size=48, epochs=2, coupling_blocks=2, fc_hidden=32, num_transforms=2,
                         num_test_transforms=3, batch_size=4)
    detector.fit(make_normal_images(6, (48, 48), seed=0))
    return detector.calibrate(make_normal_images(4, (48, 48), seed=1))


def test_score_only_onnx_export_gives_torch_scores(calibrated: DifferNet, tmp_path) -> None:
    from adcore.deployed import open_model

    sidecar = calibrated.export(tmp_path / "onnx")
    assert sidecar["score_only"] is True and sidecar["outputs"] == ["pred_score", "normalized_score"]
    parity = sidecar["parity"]
    assert parity["max_score_rel_diff"] <= 1e-4 and parity["max_map_diff_over_range"] is None
    assert parity["max_normalized_abs_diff"] <= 1e-4 and parity["max_normalized_graph_error"] <= 1e-5
    assert json.loads((tmp_path / "onnx" / "adcore-export.json").read_text())["score_only"] is True
    # any batch size, torch's scores; the map is zeros and there is no pixel threshold (no regions)
    images = torch.cat([make_normal_images(2, (60, 52), seed=5), paste_defects(make_normal_images(3, (60, 52), seed=6),
                                                                                seed=7)[0]])
    model = open_model(tmp_path / "onnx")
    got, want = model.predict(images), calibrated.predict(images)
    torch.testing.assert_close(got.pred_score, want.pred_score, rtol=1e-4, atol=0)
    assert torch.equal(got.pred_label, want.pred_label)
    assert not model.has_maps and model.pixel_threshold_ is None and calibrated.pixel_threshold_ is not None
    assert got.anomaly_map.shape == (5, 60, 52) and not bool(got.anomaly_map.any())


def test_score_only_openvino_and_torchscript(calibrated: DifferNet, tmp_path) -> None:
    pytest.importorskip("openvino", reason="adcore[export] (openvino) is not installed")
    for format in ("openvino", "torchscript"):
        assert calibrated.export(tmp_path / format, format=format)["parity"]["max_score_rel_diff"] <= 1e-4


def test_the_runtime_says_it_cannot_run_a_score_only_artefact(calibrated: DifferNet, tmp_path) -> None:
    from adcore_runtime import Runtime
    from adcore_runtime.errors import ArtefactError

    calibrated.export(tmp_path)
    with pytest.raises(ArtefactError, match="score-only export.*run it with adcore"):
        Runtime(tmp_path)


def test_resize_matrices_are_torchs_antialiased_kernel() -> None:
    images = make_normal_images(2, (48, 40), seed=3)
    rows, cols = _resize_matrices((48, 40), (12, 10))
    want = torch.nn.functional.interpolate(images, size=(12, 10), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(rows @ images @ cols.T, want, rtol=0, atol=1e-5)


def test_eval_of_a_score_only_artefact_has_no_pixel_metrics(calibrated: DifferNet, tmp_path) -> None:
    from adcore.deployed import open_model
    from adcore.evaluation import NO_MAPS_NOTE, score_test_set, EvaluationResult

    calibrated.export(tmp_path)
    good = make_normal_images(3, (48, 48), seed=20)
    bad, masks = paste_defects(make_normal_images(3, (48, 48), seed=21), seed=22)
    test_set = [{"image": image, "label": label, "mask": mask, "path": f"{index}.png"} for index, (image, label, mask) in
                enumerate(zip(torch.cat([good, bad]), [0, 0, 0, 1, 1, 1], torch.cat([torch.zeros(3, 48, 48), masks])))]
    result = EvaluationResult(threshold=calibrated.threshold_)
    score_test_set(open_model(tmp_path), test_set, result, batch_size=3, latency=False)
    assert result.image_auroc is not None and result.pixel_auroc is None and result.notes["pixel_auroc"] == NO_MAPS_NOTE
