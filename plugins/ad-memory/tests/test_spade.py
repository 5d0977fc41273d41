"""SPADE: conformance plus the method's own behaviour."""

from __future__ import annotations

import math
import warnings

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
    return SPADE(input_size=SIZE, num_image_neighbors=3, num_map_images=2).fit(train)


def test_conformance() -> None:
    check_detector(lambda: SPADE(input_size=SIZE))


def test_stages_and_stored_pyramids(fitted: SPADE) -> None:
    assert fitted.resolved_layers() == ("blocks.1", "blocks.2", "blocks.4")
    assert fitted.extractor_layers() == ("blocks.1", "blocks.2", "blocks.4", "blocks.6")  # + the global stage
    assert fitted.extractor.layer_names == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert fitted.image_features_.shape == (10, 320)
    # stored at each stage's own resolution: stride 4, 8, 16
    assert [list(s) for s in fitted.gallery_shapes_] == [[24, 16, 16], [40, 8, 8], [112, 4, 4]]
    assert fitted.gallery_.shape == (10, 24 * 256 + 40 * 64 + 112 * 16)
    assert SPADE(backbone="wide_resnet50_2").extractor_layers() == ("layer1", "layer2", "layer3", "layer4")
    assert SPADE(backbone="resnet18").extractor_layers() == ("layer1", "layer2", "layer3", "layer4")


def test_extractor_stages_are_the_union_in_network_order(train: torch.Tensor) -> None:
    # a global stage among the pyramid stages is extracted once; stages come in network order
    assert SPADE(layers=("blocks.2", "blocks.4"), global_layer="blocks.4").extractor_layers() == ("blocks.2", "blocks.4")
    shuffled = SPADE(input_size=SIZE, layers=("blocks.4", 1), global_layer="blocks.2")
    assert shuffled.extractor_layers() == ("blocks.1", "blocks.2", "blocks.4")
    pooled, maps = shuffled._features(train[:2])
    found = shuffled.extractor(train[:2])
    # the pyramid keeps the order given (its first stage sets the map grid); the index names its stage
    assert [tuple(m.shape[1:]) for m in maps] == [(112, 4, 4), (24, 16, 16)]
    assert torch.equal(maps[1], found["blocks.1"]) and torch.equal(pooled, found["blocks.2"].mean((2, 3)))


def test_image_score_is_mean_distance_to_k_nearest(fitted: SPADE) -> None:
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=5))
    pooled, _ = fitted._features(images)
    expected = _cdist(pooled, fitted.image_features_).topk(3, largest=False).values.mean(1)
    assert torch.allclose(fitted.predict(images).pred_score, expected, rtol=1e-4)


def test_image_scores_do_not_depend_on_how_many_images_are_scored_at_once(fitted: SPADE, train: torch.Tensor) -> None:
    # images close to training images, whose distances are small beside the pooled features' norms:
    # 24 at once (faiss would switch to its GEMM form at 20) against one at a time. On these 64-px
    # images the backbone's own batch rounding dominates, so the GEMM form
    # passes here too; direct_knn's own test is the one that tells the two forms apart
    noise = torch.rand(24, *train.shape[1:], generator=torch.Generator().manual_seed(11))
    images = (train[torch.arange(24) % len(train)] + 0.002 * noise).clamp(0, 1)
    together = fitted.predict(images).pred_score
    alone = torch.cat([fitted.predict(images[i:i + 1]).pred_score for i in range(len(images))])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=0)


def test_k_is_clamped_to_the_training_set(train: torch.Tensor) -> None:
    detector = SPADE(input_size=SIZE, num_image_neighbors=50, num_map_images=50).fit(train[:4])
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
    ({"num_image_neighbors": 0}, r"num_image_neighbors must be an integer in \[1, 100000\]"),
    ({"num_map_images": 0}, r"num_map_images must be an integer in \[1, 10000\]"),
    ({"num_map_neighbors": 1.5}, r"num_map_neighbors must be an integer in \[1, 10000\]"),
    ({"num_map_neighbors": 10**9}, "num_map_neighbors must be"),
    ({"sigma": -2.0}, r"sigma must be a finite number in \[0, 64\]"),
    ({"sigma": math.nan}, "sigma must be"),
    ({"sigma": math.inf}, "sigma must be"),
    ({"sigma": 1e12}, "sigma must be"),
    ({"layers": "blocks.2"}, "layers must be a non-empty sequence"),
    ({"layers": ()}, "layers must be a non-empty sequence"),
    ({"global_layer": ""}, "global_layer must be"),
    ({"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
    ({"checkpoint_path": 3}, "checkpoint_path must be a file path or None"),
])
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        SPADE(**params)


@pytest.mark.parametrize("old, new", [("image_neighbors", "num_image_neighbors"), ("map_images", "num_map_images"),
                                      ("map_neighbors", "num_map_neighbors")])
def test_old_parameter_names_still_work_with_a_warning(old: str, new: str, tmp_path) -> None:
    with pytest.warns(DeprecationWarning, match=f"'{old}' was renamed to '{new}'"):
        detector = SPADE(input_size=SIZE, **{old: 3})
    assert getattr(detector, new) == 3 and detector.get_params()[new] == 3 and old not in detector.get_params()
    with pytest.raises(InvalidInputError, match=f"{new} must be"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        SPADE(**{old: 0})  # the old name is checked against the new name's range


def test_a_model_file_with_old_parameter_names_loads(fitted: SPADE, tmp_path, monkeypatch) -> None:
    # a file written before the rename lists image_neighbors/map_images/map_neighbors in its params
    renamed = {"num_image_neighbors": "image_neighbors", "num_map_images": "map_images",
               "num_map_neighbors": "map_neighbors"}
    current = fitted.get_params()
    monkeypatch.setattr(fitted, "get_params", lambda deep=True: {renamed.get(k, k): v for k, v in current.items()})
    path = fitted.save(tmp_path / "old.safetensors")
    monkeypatch.undo()
    with pytest.warns(DeprecationWarning) as caught:
        loaded = SPADE.load(path)
    told = " ".join(str(w.message) for w in caught)
    assert all(f"'{old}' was renamed to '{new}'" in told for new, old in renamed.items())
    assert loaded.get_params() == current
    images = make_normal_images(2, (SIZE, SIZE), seed=7)
    assert torch.equal(loaded.predict(images).pred_score, fitted.predict(images).pred_score)


def test_checkpoint_path_gives_the_provider_predictions(train: torch.Tensor, lite0_checkpoint) -> None:
    images, _ = paste_defects(make_normal_images(2, (SIZE, SIZE), seed=5))
    from_file = SPADE(input_size=SIZE, num_image_neighbors=3, num_map_images=2,
                      checkpoint_path=str(lite0_checkpoint)).fit(train)
    assert from_file.extractor.weights_source.startswith("file:")
    provider = SPADE(input_size=SIZE, num_image_neighbors=3, num_map_images=2).fit(train)
    torch.testing.assert_close(from_file.image_features_, provider.image_features_, rtol=1e-5, atol=1e-6)
    ours, theirs = from_file.predict(images), provider.predict(images)
    torch.testing.assert_close(ours.pred_score, theirs.pred_score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.anomaly_map, theirs.anomaly_map, rtol=1e-5, atol=1e-6)
