"""Determinism and memory: seeded training is bit-for-bit repeatable on CPU, fit streams its data."""

from __future__ import annotations

import random
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from adcore.base import BaseDetector
from adcore.data import make_loader
from adcore.seeding import seeded, set_deterministic


class TrainedDetector(BaseDetector):
    """Random init, shuffled mini-batches, dropout and SGD: every RNG a real detector uses."""

    def __init__(self, *, input_size: int = 32, epochs: int = 3, seed: int = 0) -> None:
        self.input_size = input_size
        self.epochs = epochs
        self.seed = seed

    def _build_modules(self) -> None:
        self.net_ = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Conv2d(8, 3, 3, padding=1))

    def _fit(self, stream) -> None:
        images = stream.materialize()
        self._build_modules()
        optimizer = torch.optim.SGD(self.net_.parameters(), lr=0.05)
        self.net_.train()
        for _ in range(self.epochs):
            for index in torch.randperm(images.shape[0]).split(3):
                batch = images[index] + 0.01 * torch.randn_like(images[index])
                loss = (self.net_(batch) - images[index]).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.net_.eval()
        self.offset_ = float(np.random.rand()) + random.random()  # numpy and python RNGs are seeded too

    def _predict(self, images):
        maps = (self.net_(images) - images).pow(2).mean(1) + self.offset_
        return maps.flatten(1).amax(1), maps


def _state(detector: BaseDetector) -> dict[str, torch.Tensor]:
    tensors, meta = detector._get_state()
    return {**tensors, "meta": torch.tensor([hash(repr(sorted(meta.items())))])}


def test_same_seed_gives_bit_identical_training(normal_images):
    first = TrainedDetector(seed=7).fit(normal_images)
    second = TrainedDetector(seed=7).fit(normal_images)
    state_a, state_b = _state(first), _state(second)
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(first.predict(normal_images).anomaly_map, second.predict(normal_images).anomaly_map)
    other = TrainedDetector(seed=8).fit(normal_images)
    assert not torch.equal(other.net_[0].weight, first.net_[0].weight)


def test_fit_leaves_the_callers_random_state_alone(normal_images):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    TrainedDetector(epochs=1).fit(normal_images)
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


def test_seeded_restores_state_even_on_error():
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError), seeded(5):
        torch.rand(10)
        raise RuntimeError("interrupted")
    assert torch.equal(torch.get_rng_state(), before)


def test_example_detector_is_repeatable(gaussian, normal_images):
    again = type(gaussian)(**gaussian.get_params()).fit(normal_images)
    assert torch.equal(again.mean_, gaussian.mean_) and torch.equal(again.variance_, gaussian.variance_)
    assert torch.equal(again.predict(normal_images).anomaly_map, gaussian.predict(normal_images).anomaly_map)


def test_set_deterministic_switch(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        detector = TrainedDetector(epochs=1).fit(torch.rand(4, 3, 32, 32))  # CPU training works in this mode
        assert detector.is_fitted
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(was)


# -- streaming ---------------------------------------------------------------------------------------------------
class CountingImages(torch.utils.data.Dataset):
    """Each item is a fresh tensor; weakref finalizers count how many are alive at once."""

    def __init__(self, count: int, size: int = 32) -> None:
        self.count, self.size = count, size
        self.live = 0
        self.peak = 0
        self.reads = 0

    def __len__(self) -> int:
        return self.count

    def _released(self) -> None:
        self.live -= 1

    def __getitem__(self, index: int):
        if index >= self.count:
            raise IndexError(index)
        image = torch.rand(3, self.size, self.size, generator=torch.Generator().manual_seed(index))
        self.reads += 1
        self.live += 1
        self.peak = max(self.peak, self.live)
        weakref.finalize(image, self._released)
        return {"image": image, "label": 0}


@pytest.mark.parametrize("via", ["dataset", "loader"])
def test_fit_streams_instead_of_loading_everything(mean_detector_class, via):
    images, batch = 96, 8
    data = CountingImages(images)
    source = data if via == "dataset" else make_loader(data, batch)
    detector = mean_detector_class().fit(source)
    assert detector.count_ == images and data.reads == images
    assert data.peak <= 2 * batch, f"{data.peak} images alive at once while fitting on {images}"
    assert data.live == 0


def test_streams_reread_from_the_source_each_pass(mean_detector_class):
    from adcore.inputs import ImageStream

    data = CountingImages(20)
    stream = ImageStream(data, (32, 32), batch_size=4)
    assert stream.num_images() == 20 and stream.num_images() == 20
    assert data.reads == 40 and data.peak <= 8  # not cached: a set larger than memory still fits


def test_example_detector_fit_memory_does_not_grow_with_the_training_set():
    """The Gaussian example keeps running sums: fitting on 4× the images must not hold 4× the images."""
    from ad_example.gaussian import GaussianPatchDetector

    small, large = CountingImages(8), CountingImages(32)
    GaussianPatchDetector(input_size=32).fit(small)
    GaussianPatchDetector(input_size=32).fit(large)
    assert small.peak == large.peak <= 16
