"""Tensors given to fit/predict: every bad batch is an InvalidInputError saying what was expected.

Uses the example plugin's GaussianPatchDetector (real backbone, fitted once per session) and a
backbone-free BaseDetector subclass for speed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.errors import InvalidInputError, NotFittedError


@pytest.fixture(scope="module")
def probe(normal_images):
    return normal_images[:2]


# -- predict ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_wrong_dtype(gaussian, probe, dtype):
    with pytest.raises(InvalidInputError, match=r"predict: expected float32 images in \[0, 1\] \(or uint8 in \[0, 255\]\), "
                                                f"got dtype {dtype}"):
        gaussian.predict(probe.to(dtype))


def test_uint8_and_float64_are_converted(gaussian, probe):
    as_uint8 = (probe * 255).round().to(torch.uint8)
    expected = gaussian.predict(as_uint8.float() / 255)
    assert torch.equal(gaussian.predict(as_uint8).pred_score, expected.pred_score)
    assert torch.equal(gaussian.predict(probe.double()).pred_score, gaussian.predict(probe).pred_score)


@pytest.mark.parametrize("channels, hint", [(1, r"repeat the gray channel: images.expand\(-1, 3, -1, -1\)"),
                                            (4, r"drop alpha: images\[:, :3\]"),
                                            (2, r"images must be channels-first \(B,3,H,W\)")])
def test_wrong_channel_count(gaussian, channels, hint):
    with pytest.raises(InvalidInputError, match=rf"expected 3 RGB channels, got {channels} .*{hint}"):
        gaussian.predict(torch.rand(2, channels, 32, 32))


def test_channels_last_batch(gaussian, probe):
    with pytest.raises(InvalidInputError, match="expected 3 RGB channels, got 32 .*channels-first"):
        gaussian.predict(probe.permute(0, 2, 3, 1))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_name_the_images(gaussian, probe, value):
    bad = probe.clone()
    bad[1, 0, 3, 3] = value
    with pytest.raises(InvalidInputError, match=r"predict: images \[1\] of the batch contain NaN or Inf values"):
        gaussian.predict(bad)


def test_values_out_of_range(gaussian, probe):
    with pytest.raises(InvalidInputError, match=r"pixel values must be in \[0, 1\], got min .*, max .*; divide by 255"):
        gaussian.predict(probe * 255)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with pytest.raises(InvalidInputError, match="pass raw images: detectors apply their backbone's normalisation themselves"):
        gaussian.predict((probe - mean) / std)


def test_tiny_rounding_outside_the_range_is_clamped(gaussian, probe):
    nudged = probe.clone()
    nudged[0, 0, 0, 0] = 1.0005
    nudged[1, 0, 0, 0] = -0.0005
    assert bool(torch.isfinite(gaussian.predict(nudged).pred_score).all())


def test_valid_float_batches_are_not_copied_and_the_callers_tensor_is_never_written():
    from adcore.inputs import validate_images

    images = torch.rand(2, 3, 16, 16)
    assert validate_images(images) is images  # a huge image must not be held twice
    nudged = images.clone()
    nudged[0, 0, 0, 0] = 1.0005
    checked = validate_images(nudged)
    assert float(checked.max()) == 1.0 and float(nudged[0, 0, 0, 0]) == pytest.approx(1.0005)  # clamped a copy
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert torch.equal(validate_images(as_uint8), as_uint8.float() / 255)
    assert validate_images(as_uint8, tiling=True) is as_uint8
    channels_last = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # as load_image returns images
    assert validate_images(channels_last, tiling=True) is channels_last  # tiles are copied anyway
    assert validate_images(channels_last).is_contiguous()


def test_batch_of_one_and_shapes(gaussian, probe):
    single = gaussian.predict(probe[:1])
    assert tuple(single.pred_score.shape) == (1,) and tuple(single.anomaly_map.shape) == (1, 32, 32)
    # same score as inside a larger batch (to float rounding: CPU kernels may block differently per batch size)
    assert torch.allclose(single.pred_score, gaussian.predict(probe).pred_score[:1], rtol=1e-5, atol=1e-6)


def test_empty_batch_and_missing_batch_dimension(gaussian, probe):
    with pytest.raises(InvalidInputError, match=r"the batch is empty \(shape \(0, 3, 32, 32\)\); pass at least one image"):
        gaussian.predict(probe[:0])
    with pytest.raises(InvalidInputError, match=r"add the batch dimension: images.unsqueeze\(0\)"):
        gaussian.predict(probe[0])
    with pytest.raises(InvalidInputError, match=r"expected shape \(B,3,H,W\), got \(32, 32\)"):
        gaussian.predict(probe[0, 0])


def test_non_tensors(gaussian, probe):
    with pytest.raises(InvalidInputError, match=r"got ndarray \(a numpy array: use torch.from_numpy"):
        gaussian.predict(probe.numpy())
    with pytest.raises(InvalidInputError, match="expected a torch.Tensor of shape .*got list"):
        gaussian.predict([probe])


def test_predict_calibrate_save_before_fit(mean_detector_class, tmp_path, probe):
    detector = mean_detector_class()
    for action in (lambda: detector.predict(probe), lambda: detector.calibrate(probe), lambda: detector.save(tmp_path / "m")):
        with pytest.raises(NotFittedError, match=r"MeanDetector is not fitted yet: call fit\(good_images\) before"):
            action()
    assert not (tmp_path / "m").exists()


def test_predict_before_fit_on_the_example_detector(probe):
    from ad_example.gaussian import GaussianPatchDetector

    with pytest.raises(NotFittedError, match="GaussianPatchDetector is not fitted yet"):
        GaussianPatchDetector(input_size=32).predict(probe)


# -- fit data ------------------------------------------------------------------------------------------------
def test_fit_rejects_what_is_not_images(mean_detector_class, tmp_path):
    detector = mean_detector_class()
    with pytest.raises(InvalidInputError, match=r"fit: got the path .*, but fit\(\) takes images. Build a dataset first"):
        detector.fit(str(tmp_path))
    with pytest.raises(InvalidInputError, match="fit: got the path"):
        detector.fit(tmp_path)
    with pytest.raises(InvalidInputError, match="fit: no data given"):
        detector.fit(None)
    with pytest.raises(InvalidInputError, match="fit: expected a DataLoader, .* got int"):
        detector.fit(3)
    with pytest.raises(InvalidInputError, match="fit: the data yielded no images"):
        detector.fit(torch.zeros(0, 3, 32, 32))
    with pytest.raises(InvalidInputError, match="fit: the data yielded no images"):
        detector.fit([])
    with pytest.raises(InvalidInputError, match="a data item is a dict without an 'image' key"):
        detector.fit([{"img": torch.rand(1, 3, 32, 32)}])
    assert not detector.is_fitted


def test_bad_training_batch_names_the_batch_and_files(mean_detector_class, normal_images):
    bad = normal_images[4:8].clone()
    bad[2] = float("nan")
    batches = [{"image": normal_images[:4], "path": ["a.png", "b.png", "c.png", "d.png"]},
               {"image": bad, "path": ["e.png", "f.png", "g.png", "h.png"]}]
    with pytest.raises(InvalidInputError, match=r"fit: images \[2\] of the batch contain NaN or Inf values "
                                                r"\(in batch 1, files e\.png, f\.png, g\.png and 1 more\)"):
        mean_detector_class().fit(batches)


def test_bad_item_of_a_dataset_names_its_file(mean_detector_class):
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            image = torch.rand(3, 32, 32) if index != 1 else torch.rand(1, 32, 32)
            return {"image": image, "path": f"/line/cam{index}.png"}

    with pytest.raises(InvalidInputError, match=r"expected 3 RGB channels, got 1 .*\(files /line/cam1\.png\)"):
        mean_detector_class().fit(Items())


def test_generators_are_cached_so_multi_epoch_training_works(normal_images):
    from adcore.inputs import ImageStream

    stream = ImageStream((normal_images[i:i + 3] for i in range(0, 8, 3)), (32, 32))
    first, second = stream.materialize(), stream.materialize()
    assert first.shape[0] == 8 and torch.equal(first, second)


def test_numpy_uint8_batches_hint(mean_detector_class):
    with pytest.raises(InvalidInputError, match="cannot find images in a data item of type ndarray"):
        mean_detector_class().fit([np.zeros((1, 32, 32, 3), dtype=np.uint8)])


def test_stream_with_labels_for_calibration(normal_images, tmp_path, write_image, rgb_array):
    from adcore.data import FolderDataset
    from adcore.inputs import ImageStream

    for index in range(3):
        write_image(tmp_path / "good" / f"{index}.png", rgb_array)
    write_image(tmp_path / "bad" / "b.png", rgb_array[:10])
    pairs = list(ImageStream(FolderDataset(tmp_path / "good", [tmp_path / "bad"], image_size=None), (32, 32),
                             batch_size=2).with_labels())
    assert [tuple(batch.shape) for batch, _ in pairs] == [(2, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.cat([labels for _, labels in pairs]).tolist() == [0, 0, 0, 1]
    assert list(ImageStream(normal_images, (32, 32)).with_labels())[0][1] is None
    with pytest.raises(InvalidInputError, match=r"calibrate: 3 labels for 2 images \(in batch 0\)"):
        list(ImageStream([(normal_images[:2], torch.tensor([0, 1, 1]))], (32, 32), where="calibrate").with_labels())
    with pytest.raises(InvalidInputError, match="the labels of a data item are not numbers 0/1"):
        list(ImageStream([(normal_images[:2], ["a.png", "b.png"])], (32, 32), where="calibrate").with_labels())
    # fit ignores what rides along with the images (e.g. paths in a tuple)
    assert ImageStream([(normal_images[:2], ["a.png", "b.png"])], (32, 32)).num_images() == 2
