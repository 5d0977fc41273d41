"""Runtime.predict: adcore's Prediction fields, as numpy, on a toy artefact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adcore_runtime import InvalidInputError, Prediction, Runtime, normalize_score
from adcore_runtime.images import resize_image, resize_map


def _grey(height: int, width: int, box=None) -> np.ndarray:
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        image[y0:y1, x0:x1] = 255
    return image


def test_normalize_score_is_contract_a():
    raw = np.array([0.1, 0.2, 0.3, 5.0, -5.0])
    got = normalize_score(raw, threshold=0.2, scale=0.05)
    assert got.dtype == np.float32 and got[1] == 0.5
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(raw - 0.2) / 0.05)), rtol=1e-6, atol=1e-30)
    assert np.all(np.diff(normalize_score(np.linspace(-0.3, 0.3, 50), 0.0, 0.1)) > 0)


def test_predict_returns_prediction_fields(artefact: Path, tmp_path: Path):
    from PIL import Image

    runtime = Runtime(artefact)
    anomalous, normal = _grey(60, 90, (30, 20, 50, 40)), _grey(60, 90)
    path = tmp_path / "a.png"
    Image.fromarray(anomalous).save(path)
    prediction = runtime.predict([path, Image.fromarray(normal), anomalous])
    assert isinstance(prediction, Prediction) and len(prediction) == 3
    assert prediction.pred_score.shape == (3,) and prediction.pred_score.dtype == np.float32
    assert prediction.anomaly_map.shape == (3, 60, 90) and prediction.anomaly_map.dtype == np.float32
    assert prediction.pred_label.tolist() == [True, False, True]
    np.testing.assert_array_equal(prediction.pred_label, prediction.pred_score >= np.float32(0.2))
    np.testing.assert_allclose(prediction.normalized_score, normalize_score(prediction.pred_score, 0.2, 0.05))
    assert prediction.pred_score[0] == prediction.pred_score[2]  # a path and an array decode alike
    assert prediction.anomaly_map[0, 30, 40] > prediction.anomaly_map[0, 5, 5]  # the defect is where it was


def test_predict_is_resize_then_graph_then_resize_back(artefact: Path):
    import onnxruntime

    image = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    as_float = image.transpose(2, 0, 1).astype(np.float32) / 255
    session = onnxruntime.InferenceSession(str(artefact / "model.onnx"), providers=["CPUExecutionProvider"])
    score, amap, normalized = session.run(None, {"images": resize_image(as_float, (32, 48))[None]})
    prediction = Runtime(artefact).predict([image])
    np.testing.assert_array_equal(prediction.pred_score, score)
    np.testing.assert_array_equal(prediction.anomaly_map[0], resize_map(amap[0], (70, 50)))
    # the graph's own normalized_score output agrees with Contract A computed here
    np.testing.assert_allclose(prediction.normalized_score, normalized, rtol=1e-5, atol=1e-7)


def test_batches_do_not_change_results(artefact: Path):
    images = [_grey(40, 40, (i, i, i + 9, i + 9)) for i in range(0, 30, 3)]
    one_by_one = Runtime(artefact, batch_size=1).predict(images)
    batched = Runtime(artefact, batch_size=4).predict(np.stack(images))  # a (B,H,W,3) array too
    np.testing.assert_allclose(one_by_one.pred_score, batched.pred_score, rtol=1e-6)
    np.testing.assert_allclose(one_by_one.anomaly_map, batched.anomaly_map, rtol=1e-5, atol=1e-7)


def _spy_calls(runtime: Runtime) -> list[int]:
    """Record the batch size of every graph call ``runtime`` makes."""
    calls: list[int] = []
    run = runtime._engine.run

    def spy(input_name, batch):
        calls.append(int(batch.shape[0]))
        return run(input_name, batch)

    runtime._engine.run = spy
    return calls


@pytest.mark.parametrize("limit", [1, 2])
def test_max_batch_splits_graph_calls(tmp_path: Path, make_artefact, limit: int):
    images = [_grey(40, 40, (i, i, i + 9, i + 9)) for i in range(0, 21, 3)]  # 7 images
    limited = Runtime(make_artefact(tmp_path / "limited", max_batch=limit), batch_size=8)
    calls = _spy_calls(limited)
    got = limited.predict(images)
    assert calls == [limit] * (7 // limit) + ([7 % limit] if 7 % limit else [])
    old = Runtime(make_artefact(tmp_path / "old"), batch_size=8)  # no max_batch: one call of 7, as before
    old_calls = _spy_calls(old)
    whole = old.predict(images)
    assert old_calls == [7]
    want = [Runtime(make_artefact(tmp_path / "old"), batch_size=1).predict([image]) for image in images]
    np.testing.assert_allclose(got.pred_score, np.concatenate([w.pred_score for w in want]), rtol=1e-6)
    np.testing.assert_allclose(got.anomaly_map, np.concatenate([w.anomaly_map for w in want]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.normalized_score, whole.normalized_score, rtol=1e-6)
    assert np.array_equal(got.pred_label, whole.pred_label)


def test_max_batch_splits_a_tiled_images_tiles(tmp_path: Path, make_artefact):
    tiling = {"tile_size": [32, 48], "tile_overlap": 0.25, "tile_input_size": None}
    limited = Runtime(make_artefact(tmp_path / "limited", tiling=tiling, max_batch=1))
    calls = _spy_calls(limited)
    image = _grey(80, 130, (100, 50, 110, 60))
    got = limited.predict([image])
    assert len(calls) > 1 and set(calls) == {1}
    want = Runtime(make_artefact(tmp_path / "any", tiling=tiling)).predict([image])
    assert got.pred_score[0] == pytest.approx(float(want.pred_score[0]), rel=1e-6)
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=1e-5, atol=1e-7)


def test_mixed_sizes_go_through_predict_each(artefact: Path):
    runtime = Runtime(artefact)
    images = [_grey(20, 30), _grey(100, 64, (10, 10, 30, 30))]
    with pytest.raises(InvalidInputError, match="one size.*predict_each"):
        runtime.predict(images)
    each = list(runtime.predict_each(images))
    assert [p.anomaly_map.shape for p in each] == [(1, 20, 30), (1, 100, 64)]
    assert each[1].pred_score[0] == runtime.predict([images[1]]).pred_score[0]


def test_uncalibrated_artefact_has_no_label_nor_normalized_score(tmp_path: Path, make_artefact):
    folder = make_artefact(tmp_path / "raw", threshold=None, score_scale=None, pixel_threshold=None,
                           pixel_scale=None)
    prediction = Runtime(folder).predict([_grey(32, 48)])
    assert prediction.pred_label is None and prediction.normalized_score is None
    assert prediction.pred_score.shape == (1,)


def test_bad_arguments(artefact: Path):
    runtime = Runtime(artefact)
    with pytest.raises(InvalidInputError, match="non-empty list"):
        runtime.predict([])
    with pytest.raises(InvalidInputError, match="path, a Pillow image or a numpy array"):
        runtime.predict([42])
    with pytest.raises(InvalidInputError, match=r"float image array must hold finite values in \[0, 1\]"):
        runtime.predict([np.full((8, 8, 3), 200.0)])
    with pytest.raises(InvalidInputError, match="batch_size must be a positive integer"):
        Runtime(artefact, batch_size=0)
    with pytest.raises(InvalidInputError, match="backend must be"):
        Runtime(artefact, backend="tensorrt")


def test_tiled_artefact_scores_tile_by_tile(tmp_path: Path, make_artefact):
    tiling = {"tile_size": [32, 48], "tile_overlap": 0.25, "tile_input_size": None}
    tiled = Runtime(make_artefact(tmp_path / "tiled", tiling=tiling))
    plain = Runtime(make_artefact(tmp_path / "plain"))
    image = _grey(80, 130, (100, 50, 110, 60))  # the defect lies in the bottom-right tile only
    prediction = tiled.predict([image])
    assert prediction.anomaly_map.shape == (1, 80, 130)
    corner = plain.predict([image[-32:, -48:]])  # that tile, scored alone at the input size
    assert prediction.pred_score[0] == pytest.approx(float(corner.pred_score[0]), rel=1e-6)
    np.testing.assert_allclose(prediction.anomaly_map[0, -10:, -10:], corner.anomaly_map[0, -10:, -10:], rtol=1e-5)
    assert prediction.anomaly_map[0, :20, :20].max() < 0.01 < prediction.anomaly_map[0, 55, 105]  # grey vs defect
    uniform = tiled.predict([_grey(80, 130)]).anomaly_map[0]
    np.testing.assert_allclose(uniform, uniform[0, 0], atol=1e-6)  # blending leaves no seams


def test_openvino_outputs_renamed_by_the_converter_are_matched_by_position():
    from adcore_runtime.runtime import _OpenVinoBackend

    class Output:
        def __init__(self, *names):
            self.names = set(names)

        def get_names(self):
            return self.names

        def get_any_name(self):
            return sorted(self.names)[0]

    backend = _OpenVinoBackend.__new__(_OpenVinoBackend)
    backend.outputs = ("pred_score", "anomaly_map")
    backend.compiled = lambda inputs: {Output("/Cast_6_output_0"): [1.0], Output("/Gather_12_output_0"): [[2.0]]}
    assert {k: v.tolist() for k, v in backend.run("images", None).items()} == {"pred_score": [1.0],
                                                                               "anomaly_map": [[2.0]]}
    backend.compiled = lambda inputs: {Output("x", "anomaly_map"): [[2.0]], Output("pred_score"): [1.0]}
    assert {k: v.tolist() for k, v in backend.run("images", None).items()} == {"pred_score": [1.0],
                                                                               "anomaly_map": [[2.0]]}
