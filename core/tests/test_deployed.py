"""adcore.deployed (Contract D): one way to open a model file or an exported artefact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adcore.deployed import ExportedModel, is_exported_artefact, open_model
from adcore.errors import AdcoreError, ModelFileError
from adcore.export import SIDECAR, Tolerance
from adcore.testing import build_registered, make_normal_images, paste_defects

pytest.importorskip("onnx", reason="adcore[export] (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="adcore[export] (onnxruntime) is not installed")

TOLERANCE = Tolerance()


def _calibrated(name: str, **params):
    detector = build_registered(name, **params).fit(make_normal_images(6, (64, 64), seed=0))
    return detector.calibrate(make_normal_images(4, (64, 64), seed=1))


@pytest.fixture(scope="module", params=["padim", "patchcore"])
def exported(request, tmp_path_factory):
    """(model file, export folder, the detector) for a calibrated tiny PaDiM / PatchCore."""
    folder = tmp_path_factory.mktemp(request.param)
    detector = _calibrated(request.param)
    model_file = detector.save(folder / "model.safetensors")
    detector.export(folder / "onnx", format="onnx")
    return model_file, folder / "onnx", detector


def _assert_same(got, want, images):
    """Scores within the export's relative tolerance, maps within its share of the map's range."""
    rel = (got.pred_score - want.pred_score).abs() / want.pred_score.abs().clamp_min(1e-6)
    assert float(rel.max()) <= TOLERANCE.score_rel
    span = float(want.anomaly_map.max() - want.anomaly_map.min())
    assert float((got.anomaly_map - want.anomaly_map).abs().max()) <= TOLERANCE.map_over_range * span
    assert got.anomaly_map.shape == (images.shape[0], *images.shape[-2:])
    assert torch.equal(got.pred_label, want.pred_label)
    np.testing.assert_allclose(got.normalized_score.numpy(), want.normalized_score.numpy(), atol=1e-4)


def test_open_model_gives_the_torch_scores_both_ways(exported):
    model_file, folder, detector = exported
    images = torch.cat([make_normal_images(2, (80, 72), seed=4), paste_defects(make_normal_images(2, (80, 72), seed=5),
                                                                                seed=6)[0]])
    want = detector.predict(images)
    from_file = open_model(model_file)
    assert type(from_file) is type(detector)  # the BaseDetector itself
    assert from_file.name == detector_name(detector) == detector.name  # Contract D: both have a name
    torch.testing.assert_close(from_file.predict(images).pred_score, want.pred_score)
    for path in (folder, folder / SIDECAR, str(folder)):
        model = open_model(path)
        assert isinstance(model, ExportedModel) and model.runtime == "onnx"
        assert model.name == detector_name(detector) and model.is_fitted and not model.tiled
        assert model.image_size == (64, 64) and model.load_size == (64, 64)
        assert model.threshold_ == pytest.approx(detector.threshold_) and model.score_scale_ == pytest.approx(
            detector.score_scale_)
        assert model.pixel_threshold_ == pytest.approx(detector.pixel_threshold_)
        _assert_same(model.predict(images), want, images)


def detector_name(detector) -> str:
    from adcore.lookups import origin_of

    return origin_of(type(detector)).name


def test_openvino_and_torchscript_artefacts_open_too(exported, tmp_path):
    pytest.importorskip("openvino", reason="adcore[export] (openvino) is not installed")
    _, _, detector = exported
    images = make_normal_images(3, (64, 64), seed=11)
    want = detector.predict(images)
    for format in ("openvino", "torchscript"):
        detector.export(tmp_path / format, format=format)
        model = open_model(tmp_path / format)
        assert model.runtime == format
        _assert_same(model.predict(images), want, images)


def test_tiled_artefact_cuts_and_blends_like_the_detector(tmp_path):
    detector = build_registered("padim").set_params(tile_size=32, tile_overlap=0.25)
    detector.fit(make_normal_images(2, (64, 64), seed=0))
    detector.export(tmp_path)
    model = open_model(tmp_path)
    assert model.tiled and model.load_size is None and model.tile_size == 32
    images = make_normal_images(2, (70, 90), seed=3)
    got, want = model.predict(images), detector.predict(images)
    assert got.pred_label is None and got.normalized_score is None  # not calibrated
    rel = (got.pred_score - want.pred_score).abs() / want.pred_score.abs()
    assert float(rel.max()) <= TOLERANCE.score_rel
    span = float(want.anomaly_map.max() - want.anomaly_map.min())
    assert float((got.anomaly_map - want.anomaly_map).abs().max()) <= TOLERANCE.map_over_range * span


def test_a_folder_that_is_neither_says_what_to_give(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="not an exported model.*holds no adcore-export.json"):
        open_model(tmp_path / "empty")
    with pytest.raises(ModelFileError, match="does not exist"):
        open_model(tmp_path / "missing.safetensors")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / SIDECAR).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not an adcore export sidecar"):
        open_model(tmp_path / "other")
    assert not is_exported_artefact(tmp_path / "empty") and is_exported_artefact(tmp_path / "other")


def test_a_sidecar_without_its_graph_or_from_a_newer_adcore(exported, tmp_path):
    _, folder, _ = exported
    sidecar = json.loads((folder / SIDECAR).read_text())
    (tmp_path / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match="names the graph 'model.onnx', which is not in"):
        open_model(tmp_path)
    (tmp_path / SIDECAR).write_text(json.dumps({**sidecar, "format_version": 99}))
    with pytest.raises(AdcoreError, match="format version 99; this adcore reads up to 1"):
        open_model(tmp_path / SIDECAR)


def _spy_graph_calls(monkeypatch) -> list[int]:
    """Record the batch size of every call an ExportedModel makes to its artefact's graph."""
    calls: list[int] = []
    runner = ExportedModel._runner

    def spied(self):
        run = runner(self)

        def spy(images):
            calls.append(int(images.shape[0]))
            return run(images)
        return spy

    monkeypatch.setattr(ExportedModel, "_runner", spied)
    return calls


def _copy_with(folder, target, **changes):
    """The export folder copied to ``target`` with its sidecar changed (a ``None`` value drops the key)."""
    import shutil

    shutil.copytree(folder, target)
    sidecar = json.loads((target / SIDECAR).read_text())
    sidecar.update({k: v for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        sidecar.pop(key, None)
    (target / SIDECAR).write_text(json.dumps(sidecar))
    return target


def test_max_batch_splits_graph_calls(exported, tmp_path, monkeypatch):
    _, folder, detector = exported
    # PatchCore's kNN blocks and PaDiM's whitening grow with the batch: each declares its calls' size
    declared = {"patchcore": 1, "padim": 4}[detector_name(detector)]
    assert json.loads((folder / SIDECAR).read_text())["max_batch"] == declared
    images = torch.cat([make_normal_images(3, (64, 64), seed=7), paste_defects(make_normal_images(2, (64, 64), seed=8),
                                                                                seed=9)[0]])
    calls = _spy_graph_calls(monkeypatch)
    old = open_model(_copy_with(folder, tmp_path / "old", max_batch=None))  # a sidecar from before the key
    assert old.max_batch is None
    whole = old.predict(images)
    assert calls == [5]  # as before: one call per predict_batch_size images
    for limit in (declared, 2):
        expected = [limit] * (5 // limit) + ([5 % limit] if 5 % limit else [])
        calls.clear()
        model = open_model(_copy_with(folder, tmp_path / f"limit{limit}", max_batch=limit))
        assert model.max_batch == limit
        got = model.predict(images)
        assert calls == expected
        one_by_one = [model.predict(images[i:i + 1]) for i in range(images.shape[0])]
        scores, maps = torch.cat([p.pred_score for p in one_by_one]), torch.cat([p.anomaly_map for p in one_by_one])
        if limit == 1:  # the very calls one image at a time makes
            assert torch.equal(got.pred_score, scores) and torch.equal(got.anomaly_map, maps)
        else:  # another batch size: the engine's float rounding differs, within float32 noise
            torch.testing.assert_close(got.pred_score, scores, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(got.anomaly_map, maps, rtol=1e-4, atol=1e-3 * float(maps.max() - maps.min()))
        _assert_same(got, whole, images)


@pytest.mark.parametrize("bad", [0, -2, "1", True, 1.5])
def test_a_bad_max_batch_says_what_is_wrong(exported, tmp_path, bad):
    _, folder, _ = exported
    with pytest.raises(ModelFileError, match=f"max_batch must be a positive integer or null, got {bad!r}"):
        open_model(_copy_with(folder, tmp_path / "bad", max_batch=bad))


def test_device_is_accepted(exported):
    model_file, folder, detector = exported
    assert open_model(model_file, device="cpu").is_fitted
    assert open_model(folder, device="auto").device == "cpu"
    with pytest.warns(UserWarning, match="run on the CPU"):
        open_model(folder, device="cuda")
