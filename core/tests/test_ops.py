"""Shared numeric operations: neighbourhood pooling, smoothing, upsampling, exact kNN."""

from __future__ import annotations

import torch

from adcore.ops import average_pool_neighbourhood, gaussian_blur, knn_distances, upsample


def test_neighbourhood_pooling_inside_the_map_or_with_zero_padding() -> None:
    features = torch.ones(1, 2, 5, 5)
    inside = average_pool_neighbourhood(features, 3)
    padded = average_pool_neighbourhood(features, 3, zero_padding=True)
    assert torch.equal(inside, features)  # only in-map neighbours: a constant map stays constant
    assert float(padded[0, 0, 2, 2]) == 1.0  # interior: the same either way
    assert abs(float(padded[0, 0, 0, 2]) - 6 / 9) < 1e-6  # edge: three of nine neighbours are padding
    assert abs(float(padded[0, 0, 0, 0]) - 4 / 9) < 1e-6  # corner: five of nine


def test_gaussian_blur_keeps_constants_and_mass_centre() -> None:
    maps = torch.full((2, 16, 16), 3.0)
    assert torch.allclose(gaussian_blur(maps, 4.0), maps)
    spike = torch.zeros(1, 33, 33)
    spike[0, 16, 16] = 1.0
    blurred = gaussian_blur(spike, 2.0)
    assert int(blurred.flatten().argmax()) == 16 * 33 + 16 and float(blurred.max()) < 1.0


def test_upsample_and_exact_knn() -> None:
    assert upsample(torch.rand(2, 4, 4), (8, 12)).shape == (2, 8, 12)
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    distances, indices = knn_distances(torch.tensor([[3.0, 3.0]]), bank, k=2)
    assert indices.tolist() == [[1, 0]]
    assert torch.allclose(distances, torch.tensor([[1.0, 18 ** 0.5]]))
