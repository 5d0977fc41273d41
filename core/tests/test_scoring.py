"""The normalised score (Contract A) and the calibration of the pixel threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adcore.scoring import PixelSample, fpr_threshold, normalize_score, spread

from adcore.base import BaseDetector


class MeanDetector(BaseDetector):
    """Score = mean absolute deviation from the mean training image."""

    def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
        self.input_size = input_size
        self.seed = seed

    def _fit(self, stream) -> None:
        batches = torch.cat(list(stream))
        self.mean_ = batches.mean(0)

    def _predict(self, images):
        maps = (images - self.mean_).abs().mean(1)
        return maps.mean((1, 2)), maps


def test_normalisation_is_monotone_and_one_half_at_the_threshold():
    raw = torch.linspace(-50, 50, 1001)
    normalized = normalize_score(raw, 3.0, 2.5)
    assert normalized.dtype == torch.float32
    assert bool((normalized[1:] >= normalized[:-1]).all())
    assert float(normalize_score(torch.tensor([3.0]), 3.0, 2.5)[0]) == 0.5
    assert normalize_score(3.0, 3.0, 2.5) == 0.5
    assert normalize_score(np.array([3.0]), 3.0, 2.5)[0] == np.float32(0.5)
    assert normalize_score(3.0 + 2.5, 3.0, 2.5) == pytest.approx(1 / (1 + math.exp(-1)))
    assert normalize_score(np.array([-1e6, 1e6]), 0.0, 1.0).tolist() == [0.0, 1.0]  # no overflow
    assert float(normalized[0]) < 0.5 < float(normalized[-1])


def test_spread_rule():
    values = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 4 + 10
    assert spread(values, 10.0) == pytest.approx(4.0, rel=0.03)  # IQR/1.349 is the std of a normal
    assert spread(torch.tensor([1.0, 1.0, 1.0, 5.0]), 1.0) > 0  # IQR zero: std
    assert spread(torch.tensor([2.0, 2.0]), 200.0) == pytest.approx(0.2)  # all equal: |threshold| * 1e-3
    assert spread(torch.tensor([2.0]), 0.0) == pytest.approx(1e-3)


def test_fpr_threshold_flags_at_most_the_target():
    values = torch.arange(1000, dtype=torch.float32)
    threshold, achieved = fpr_threshold(values, 0.01)
    assert int((values >= threshold).sum()) == 10 and achieved == pytest.approx(0.01)


def test_pixel_sample_is_bounded_and_uniform(monkeypatch):
    monkeypatch.setattr(PixelSample, "per_image", 500)
    monkeypatch.setattr(PixelSample, "capacity", 2000)
    sample = PixelSample()
    for index in range(40):
        sample.add(torch.full((1, 40, 40), float(index)))
    assert len(sample) == 2000 and sample.offered == 40 * 1600
    counts = torch.bincount(sample.values.long(), minlength=40).float()
    assert float(counts.min()) > 20 and float(counts.max()) < 90  # 50 expected from each image
    exact = PixelSample()
    exact.add(torch.arange(12.0).reshape(3, 2, 2))
    assert sorted(exact.values.tolist()) == list(range(12))


def test_calibrate_sets_readable_scores_and_a_pixel_threshold():
    detector = MeanDetector().fit(torch.rand(8, 3, 32, 32))
    good = torch.rand(50, 3, 32, 32)
    detector.calibrate(good, target_fpr=0.1, pixel_target_fpr=0.01)
    assert detector.score_scale_ > 0 and detector.pixel_scale_ > 0
    prediction = detector.predict(good)
    assert prediction.normalized_score.dtype == torch.float32
    assert torch.equal(prediction.normalized_score >= 0.5, prediction.pred_label)
    order = torch.argsort(prediction.pred_score)
    assert bool((prediction.normalized_score[order].diff() >= 0).all())
    flagged = float((prediction.anomaly_map >= detector.pixel_threshold_).float().mean())
    assert flagged <= 0.01 and flagged > 0.005
    assert detector.calibration_["pixel_target_fpr"] == 0.01 and detector.calibration_["pixels_seen"] == 50 * 32 * 32


def test_uncalibrated_and_refitted_models_have_no_normalised_score(tmp_path):
    detector = MeanDetector().fit(torch.rand(4, 3, 32, 32))
    assert detector.predict(torch.rand(1, 3, 32, 32)).normalized_score is None
    detector.calibrate(torch.rand(10, 3, 32, 32))
    loaded = MeanDetector.load(detector.save(tmp_path / "m.safetensors"))
    assert (loaded.score_scale_, loaded.pixel_threshold_, loaded.pixel_scale_) == \
        (detector.score_scale_, detector.pixel_threshold_, detector.pixel_scale_)
    probe = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.predict(probe).normalized_score, detector.predict(probe).normalized_score)
    detector.fit(torch.rand(4, 3, 32, 32))
    assert detector.pixel_threshold_ is None and detector.predict(probe).normalized_score is None


def test_labelled_calibration_takes_pixels_from_good_images_only():
    detector = MeanDetector().fit(torch.full((4, 3, 32, 32), 0.5))
    good = torch.full((6, 3, 32, 32), 0.5) + 0.01 * torch.rand(6, 3, 32, 32)
    bad = good.clone()
    bad[:, :, :8, :8] = 1.0
    detector.calibrate([(torch.cat([good, bad]), torch.tensor([0] * 6 + [1] * 6))])
    assert detector.calibration_["pixels_seen"] == 6 * 32 * 32
    assert detector.pixel_threshold_ < float(detector.predict(bad).anomaly_map.max())
