"""BaseDetector conventions: params, validation at construction, data forms, calibration, resizing."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from adcore.base import COMMON_PARAMETERS, BaseDetector
from adcore.errors import InvalidInputError, NotFittedError


class MeanDetector(BaseDetector):
    """Score = mean absolute deviation from the mean training image (a tiny real detector)."""

    def __init__(self, *, input_size: int = 32, scale: float = 1.0, seed: int = 0) -> None:
        self.input_size = input_size
        self.scale = scale
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()
        if not 0 < self.scale <= 10:
            raise InvalidInputError(f"scale must be in (0, 10], got {self.scale}")

    def _fit(self, stream) -> None:
        total, count = 0, 0
        for batch in stream:
            total = total + batch.sum(0)
            count += batch.shape[0]
        self.mean_ = total / count
        self.seen_ = count

    def _predict(self, images):
        maps = (images - self.mean_).abs().mean(1) * self.scale
        return maps.flatten(1).amax(1), maps


def test_get_params_reads_the_signature_and_set_params_validates():
    detector = MeanDetector(scale=2.0)
    assert detector.get_params() == {"input_size": 32, "scale": 2.0, "seed": 0, **COMMON_PARAMETERS}
    with pytest.raises(InvalidInputError, match=r"scale must be in \(0, 10\]"):
        detector.set_params(scale=0)
    with pytest.raises(InvalidInputError, match="no parameter 'scal'"):
        detector.set_params(scal=1)


def test_out_of_range_parameters_fail_at_construction():
    with pytest.raises(InvalidInputError, match="scale"):
        MeanDetector(scale=-1)
    with pytest.raises(InvalidInputError, match="input_size"):
        MeanDetector(input_size=3)


@pytest.mark.parametrize("form", ["tensor", "list", "loader", "tuples", "dicts", "generator", "dataset"])
def test_fit_accepts_every_data_form(form: str):
    images = torch.rand(10, 3, 40, 40)
    data = {
        "tensor": images,
        "list": [images[:5], images[5:]],
        "loader": DataLoader(images, batch_size=4),
        "tuples": [(images[:5], torch.zeros(5)), (images[5:], torch.zeros(5))],
        "dicts": [{"image": images[:5]}, {"image": images[5:]}],
        "generator": (images[i:i + 3] for i in range(0, 10, 3)),
        "dataset": TensorDataset(images),
    }[form]
    if form == "dataset":
        data = [item[0][None] for item in data]
    detector = MeanDetector().fit(data)
    assert detector.seen_ == 10


def test_predict_returns_maps_at_the_input_size_and_requires_fit():
    detector = MeanDetector()
    with pytest.raises(NotFittedError, match="call fit"):
        detector.predict(torch.rand(1, 3, 32, 32))
    detector.fit(torch.rand(4, 3, 32, 32))
    prediction = detector.predict(torch.rand(2, 3, 50, 70))
    assert prediction.anomaly_map.shape == (2, 50, 70) and prediction.pred_label is None


def test_calibrate_on_good_images_meets_the_false_positive_target():
    detector = MeanDetector().fit(torch.rand(8, 3, 32, 32))
    good = torch.rand(100, 3, 32, 32)
    detector.calibrate(good, target_fpr=0.05)
    flagged = int(detector.predict(good).pred_label.sum())
    assert flagged == 5  # exactly the allowed 5 % of 100 distinct scores
    assert detector.calibration_["method"] == "fpr"
    detector.calibrate(good, target_fpr=0.0)
    assert detector.predict(good).pred_label.sum() == 0


def test_calibrate_with_labels_uses_best_f1():
    detector = MeanDetector().fit(torch.full((4, 3, 32, 32), 0.5))
    good = torch.full((6, 3, 32, 32), 0.5) + 0.01 * torch.rand(6, 3, 32, 32)
    bad = good.clone()
    bad[:, :, :8, :8] = 1.0
    detector.calibrate([(torch.cat([good, bad]), torch.tensor([0] * 6 + [1] * 6))])
    assert detector.calibration_["method"] == "f1" and detector.calibration_["f1"] == 1.0
    labels = detector.predict(torch.cat([good, bad])).pred_label
    assert labels.tolist() == [False] * 6 + [True] * 6
    assert math.isfinite(detector.threshold_)


def test_seeded_fit_leaves_the_callers_random_state_alone():
    images = torch.rand(2, 3, 32, 32)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    MeanDetector(seed=7).fit(images)
    assert torch.equal(torch.rand(1), expected)


def test_save_and_load_round_trip(tmp_path):
    detector = MeanDetector(scale=3.0).fit(torch.rand(4, 3, 32, 32))
    detector.calibrate(torch.rand(10, 3, 32, 32))
    path = detector.save(tmp_path / "m.safetensors")
    loaded = MeanDetector.load(path)
    probe = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.predict(probe).anomaly_map, detector.predict(probe).anomaly_map)
    assert loaded.threshold_ == detector.threshold_ and loaded.seen_ == 4 and loaded.scale == 3.0


def test_rejected_set_params_leaves_the_old_value():
    detector = MeanDetector(scale=2.0)
    with pytest.raises(InvalidInputError):
        detector.set_params(scale=0, input_size=64)
    assert detector.get_params() == {"input_size": 32, "scale": 2.0, "seed": 0, **COMMON_PARAMETERS}


@pytest.mark.parametrize("seed", ["x", 1.5, True, -1, 2**70])
def test_invalid_seeds_are_rejected_at_construction(seed):
    with pytest.raises(InvalidInputError, match="seed must be an integer"):
        MeanDetector(seed=seed)


def test_a_detector_returning_nan_is_an_error_naming_it():
    from adcore.errors import DetectorOutputError

    class NanDetector(MeanDetector):
        def _predict(self, images):
            scores, maps = super()._predict(images)
            return scores * float("nan"), maps

    detector = NanDetector().fit(torch.rand(2, 3, 32, 32))
    with pytest.raises(DetectorOutputError, match="NanDetector returned NaN"):
        detector.predict(torch.rand(1, 3, 32, 32))


def test_calibrate_accepts_a_map_style_dataset():
    detector = MeanDetector().fit(torch.rand(4, 3, 32, 32))
    dataset = [{"image": image, "label": 0} for image in torch.rand(10, 3, 32, 32)]
    detector.calibrate(dataset, target_fpr=0.1)
    assert detector.calibration_["images"] == 10
