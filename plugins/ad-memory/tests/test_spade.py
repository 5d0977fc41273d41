"""SPADE: conformance plus the method's own behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ad_memory.spade import SPADE
from adcore.errors import InvalidInputError
from adcore.testing import check_detector, make_normal_images, paste_defects

SIZE = 64


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


@pytest.fixture(scope="module")
def train() -> torch.Tensor:
    return make_normal_images(10, (SIZE, SIZE), seed=0)


@pytest.fixture(scope="module")
def fitted(train: torch.Tensor) -> SPADE:
    return SPADE(input_size=SIZE, image_neighbors=3, map_images=2).fit(train)


def test_conformance() -> None:
    check_detector(lambda: SPADE(input_size=SIZE))


def test_stages_and_stored_pyramids(fitted: SPADE) -> None:
    assert fitted._stages() == (("blocks.1", "blocks.2", "blocks.4"), "blocks.6")
    assert fitted.image_features_.shape == (10, 320)
    # stored at each stage's own resolution: stride 4, 8, 16
    assert [list(s) for s in fitted.gallery_shapes_] == [[24, 16, 16], [40, 8, 8], [112, 4, 4]]
    assert fitted.gallery_.shape == (10, 24 * 256 + 40 * 64 + 112 * 16)
    assert SPADE(backbone="wide_resnet50_2")._stages() == (("layer1", "layer2", "layer3"), "layer4")


def test_image_score_is_mean_distance_to_k_nearest(fitted: SPADE) -> None:
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=5))
    pooled, _ = fitted._features(images)
    expected = _cdist(pooled, fitted.image_features_).topk(3, largest=False).values.mean(1)
    assert torch.allclose(fitted.predict(images).pred_score, expected, rtol=1e-4)


def test_k_is_clamped_to_the_training_set(train: torch.Tensor) -> None:
    detector = SPADE(input_size=SIZE, image_neighbors=50, map_images=50).fit(train[:4])
    images = make_normal_images(2, (SIZE, SIZE), seed=8)
    pooled, _ = detector._features(images)
    expected = _cdist(pooled, detector.image_features_).mean(1)  # all four training images
    assert torch.allclose(detector.predict(images).pred_score, expected, rtol=1e-4)


def test_pixel_map_matches_the_nearest_images_pyramids(fitted: SPADE, train: torch.Tensor) -> None:
    images, masks = paste_defects(make_normal_images(2, (SIZE, SIZE), seed=6))
    pooled, maps = fitted._features(images)
    nearest = _cdist(pooled, fitted.image_features_).topk(2, largest=False).indices
    grid = maps[0].shape[-2:]
    query = torch.cat([F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps], 1)
    _, train_maps = fitted._features(train)
    gallery_all = torch.cat([F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in train_maps], 1)
    raw = SPADE(**{**fitted.get_params(), "sigma": 0.0})
    for name in ("image_features_", "gallery_", "gallery_shapes_"):
        setattr(raw, name, getattr(fitted, name))
    raw.fitted_ = True
    got = raw.predict(images).anomaly_map
    for row in range(2):
        gallery = gallery_all[nearest[row]].permute(0, 2, 3, 1).reshape(-1, query.shape[1])
        pixels = query[row].permute(1, 2, 0).reshape(-1, query.shape[1])
        expected = _cdist(pixels, gallery).min(1).values.view(1, 1, *grid)
        expected = F.interpolate(expected, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
        assert torch.allclose(got[row], expected, atol=2e-2, rtol=1e-3)
    smoothed = fitted.predict(images).anomaly_map
    assert float(smoothed[masks > 0].mean()) > float(smoothed[masks == 0].mean())


def test_a_training_image_has_a_zero_map(fitted: SPADE, train: torch.Tensor) -> None:
    prediction = fitted.predict(train[:2])
    assert float(prediction.anomaly_map.abs().max()) < 1e-2  # every pixel finds itself in the gallery


@pytest.mark.parametrize("params, message", [
    ({"image_neighbors": 0}, "image_neighbors"),
    ({"map_images": 0}, "map_images"),
    ({"map_neighbors": 1.5}, "map_neighbors"),
    ({"sigma": -2.0}, "sigma"),
])
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        SPADE(**params)
