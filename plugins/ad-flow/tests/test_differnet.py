"""DifferNet: conformance, multi-scale descriptors, test-time transforms, gradient localisation."""

from __future__ import annotations

import math

import pytest
import torch

from ad_flow.differnet import DifferNet, transform_images
from ad_flow.flows import flow_nll
from adcore.errors import InvalidInputError
from adcore.testing import build_registered, check_detector, make_normal_images


def test_conformance_with_registered_quick_params() -> None:
    check_detector(lambda: build_registered("differnet"), name="differnet")


@pytest.fixture(scope="module")
def fitted() -> DifferNet:
    params = dict(input_size=64, epochs=3, coupling_blocks=2, fc_hidden=32, num_transforms=2, num_test_transforms=1,
                  rotation_degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0, sigma=0.0, batch_size=4)
    return DifferNet(**params).fit(make_normal_images(8, (64, 64), seed=2))


def test_descriptor_concatenates_pooled_features_of_three_scales(fitted: DifferNet) -> None:
    assert fitted.feature_dim_ == 3 * 320  # Lite0 blocks.6 has 320 channels
    images = make_normal_images(2, (64, 64), seed=4)
    extractor = fitted.extractor
    with torch.no_grad():
        raw = fitted._raw_descriptors(images)
        half = extractor(torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True))
    assert torch.allclose(raw[:, :320], extractor(images)["blocks.6"].mean((2, 3)), atol=1e-5)
    assert torch.allclose(raw[:, 320:640], half["blocks.6"].mean((2, 3)), atol=1e-5)
    assert len(fitted.flow_.module_list) == 2 * 2  # coupling block + permutation per block


def test_score_and_map_are_the_nll_and_its_input_gradient(fitted: DifferNet) -> None:
    image = make_normal_images(1, (64, 64), seed=11)
    prediction = fitted.predict(image)
    pixels = image.clone().requires_grad_(True)  # one identity transform: score and gradient by hand
    z, log_jac = fitted.flow_(fitted._descriptors(pixels))
    expected_score = 0.5 * z.pow(2).sum() / fitted.feature_dim_
    gradient, = torch.autograd.grad(flow_nll(z, log_jac).sum() / fitted.feature_dim_, pixels)
    assert torch.allclose(prediction.pred_score, expected_score.detach()[None], rtol=1e-5)
    assert torch.allclose(prediction.anomaly_map, gradient.abs().sum(1), rtol=1e-3, atol=1e-4)


def test_score_averages_over_test_time_transforms(fitted: DifferNet) -> None:
    many = DifferNet(**{**fitted.get_params(), "num_test_transforms": 3, "rotation_degrees": 90.0})
    for name in ("feature_dim_", "feature_mean_", "feature_std_", "flow_", "fitted_", "threshold_"):
        setattr(many, name, getattr(fitted, name))
    image = make_normal_images(1, (64, 64), seed=12)
    generator = torch.Generator().manual_seed(many.seed + 7919)
    params = many._draw_transforms(3, generator)
    with torch.no_grad():
        z, _ = many.flow_(many._descriptors(transform_images(image.expand(3, -1, -1, -1), *params)))
    expected = (0.5 * z.pow(2).sum(1) / many.feature_dim_).mean()
    assert torch.allclose(many.predict(image).pred_score, expected[None], rtol=1e-5)


def test_images_scored_together_equal_images_scored_one_by_one(fitted: DifferNet) -> None:
    # several images' views share one backward pass; each image's gradient must stay its own
    many = DifferNet(**{**fitted.get_params(), "num_test_transforms": 5, "rotation_degrees": 45.0})
    for name in ("feature_dim_", "feature_mean_", "feature_std_", "flow_", "fitted_", "threshold_"):
        setattr(many, name, getattr(fitted, name))
    images = make_normal_images(3, (64, 64), seed=13)
    together = many.predict(images)
    alone = [many.predict(images[i:i + 1]) for i in range(3)]
    assert torch.allclose(together.pred_score, torch.cat([p.pred_score for p in alone]), rtol=1e-5)
    one_by_one = torch.cat([p.anomaly_map for p in alone])
    # batch size changes the float summation order of the convolutions: equal up to rounding,
    # measured against the map's own scale (raw input gradients reach 1e5 here)
    assert float((together.anomaly_map - one_by_one).abs().max()) <= 1e-4 * float(one_by_one.abs().max())
    assert not torch.allclose(together.anomaly_map[0], together.anomaly_map[1])  # not one shared map


def test_view_pool_trains_on_a_fixed_pool_of_augmented_views() -> None:
    params = dict(input_size=64, epochs=4, coupling_blocks=2, fc_hidden=32, num_transforms=2, view_pool=3,
                  num_test_transforms=1, batch_size=4)
    detector = DifferNet(**params).fit(make_normal_images(6, (64, 64), seed=5))
    loss = detector.history_["loss"]
    assert len(loss) == 4 and loss[-1] < loss[0]
    assert detector.timing_["features_s"] > 0  # the pool went through the backbone once, before the epochs


def test_transforms_identity_rotation_and_jitter() -> None:
    images = torch.rand(2, 3, 16, 16) * 0.8 + 0.1
    one, zero = torch.ones(2), torch.zeros(2)
    assert torch.allclose(transform_images(images, zero, one, one, one), images, atol=1e-5)
    quarter = transform_images(images, torch.full((2,), math.pi / 2), one, one, one)
    assert torch.allclose(quarter, torch.rot90(images, k=1, dims=(2, 3)), atol=1e-5)
    brighter = transform_images(images, zero, torch.full((2,), 1.1), one, one)
    assert torch.allclose(brighter, (images * 1.1).clamp(0, 1), atol=1e-6)
    grey = transform_images(images, zero, one, one, zero)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-6)
    flat = transform_images(images, zero, one, zero, one)  # contrast 0: every pixel becomes the mean grey
    assert float(flat.std(dim=(1, 2, 3)).max()) < 1e-5


def test_defaults_follow_the_paper() -> None:
    detector = DifferNet()
    assert (detector.num_scales, detector.coupling_blocks, detector.clamp, detector.num_transforms,
            detector.num_test_transforms, detector.fc_hidden, detector.learning_rate) == (3, 8, 3.0, 4, 64, 2048, 2e-4)
    assert DifferNet.inference_mode is False


@pytest.mark.parametrize("params, message", [
    ({"num_scales": 0}, "num_scales"), ({"coupling_blocks": 0}, "coupling_blocks"),
    ({"num_test_transforms": 0}, "num_test_transforms"), ({"rotation_degrees": 200.0}, "rotation_degrees"),
    ({"brightness": 1.0}, "brightness"), ({"sigma": -1.0}, "sigma"), ({"fc_layers": 0}, "fc_layers"),
    ({"learning_rate": 0.0}, "learning_rate"), ({"view_pool": -1}, "view_pool"),
])
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        DifferNet(**params)
