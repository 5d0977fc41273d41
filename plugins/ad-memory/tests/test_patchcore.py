"""PatchCore: conformance plus the method's own behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from ad_memory.patchcore import PatchCore
from adcore.errors import InvalidInputError
from adcore.testing import check_detector, make_normal_images, paste_defects

SIZE = 64


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # exact, no |a|²+|b|²-2ab rounding


@pytest.fixture(scope="module")
def train() -> torch.Tensor:
    return make_normal_images(12, (SIZE, SIZE), seed=0)


@pytest.fixture(scope="module")
def fitted(train: torch.Tensor) -> PatchCore:
    return PatchCore(input_size=SIZE, coreset_ratio=0.25).fit(train)


def test_conformance() -> None:
    check_detector(lambda: PatchCore(input_size=SIZE, coreset_ratio=0.25))


def test_bank_is_a_coreset_of_the_patch_features(fitted: PatchCore, train: torch.Tensor) -> None:
    patches = fitted._embed(train)
    grid = patches.shape[-2:]
    assert list(grid) == fitted.feature_grid_ == [SIZE // 8, SIZE // 8]  # the stride-8 stage's grid
    rows = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
    assert fitted.coreset_stats_["patches_used"] == rows.shape[0]
    assert fitted.memory_bank_.shape == (math.ceil(0.25 * rows.shape[0]), 40 + 112)
    # every bank row is one of the patch features
    assert _cdist(fitted.memory_bank_, rows).min(1).values.max() < 1e-4
    assert fitted.projection_.shape == (152, 128)


def test_training_patches_score_zero_with_full_bank(train: torch.Tensor) -> None:
    detector = PatchCore(input_size=SIZE, coreset_ratio=1.0).fit(train)
    prediction = detector.predict(train[:3])
    assert torch.allclose(prediction.pred_score, torch.zeros(3), atol=1e-2)
    assert float(prediction.anomaly_map.abs().max()) < 1e-2


def test_image_score_follows_the_paper_reweighting(fitted: PatchCore) -> None:
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=9))
    patches = fitted._embed(images)
    rows = patches.permute(0, 2, 3, 1).reshape(3, -1, patches.shape[1])
    bank = fitted.memory_bank_
    distance = _cdist(rows, bank[None].expand(3, -1, -1))  # (3, P, M)
    nearest, match = distance.min(2)
    worst = nearest.argmax(1)
    s_star = nearest[torch.arange(3), worst]
    expected = []
    for image in range(3):
        m_star = match[image, worst[image]]
        neighbourhood = _cdist(bank[m_star][None], bank)[0].topk(9, largest=False).indices  # N_b(m*), m* first
        to_test = (bank[neighbourhood] - rows[image, worst[image]]).norm(dim=1)
        weight = 1 - torch.exp(to_test[0]) / torch.exp(to_test).sum()
        expected.append(weight * s_star[image])
    scores = fitted.predict(images).pred_score
    assert torch.allclose(scores, torch.stack(expected), rtol=1e-3)
    # num_neighbors=1 switches the reweighting off: the score is s*
    plain = PatchCore(**{**fitted.get_params(), "num_neighbors": 1})
    plain.memory_bank_, plain.fitted_ = fitted.memory_bank_, True
    assert torch.allclose(plain.predict(images).pred_score, s_star, rtol=1e-3)


def test_map_is_smoothed_patch_distance(fitted: PatchCore) -> None:
    images, masks = paste_defects(make_normal_images(2, (SIZE, SIZE), seed=3))
    maps = fitted.predict(images).anomaly_map
    assert maps.shape == (2, SIZE, SIZE)
    assert float(maps[masks > 0].mean()) > 1.4 * float(maps[masks == 0].mean())
    rough = PatchCore(**{**fitted.get_params(), "sigma": 0.0})
    rough.memory_bank_, rough.fitted_ = fitted.memory_bank_, True
    raw = rough.predict(images).anomaly_map
    # smoothing keeps the mass but removes the blockiness of the 8×8 grid
    assert (maps[:, 1:] - maps[:, :-1]).abs().mean() < (raw[:, 1:] - raw[:, :-1]).abs().mean()


def test_max_patches_caps_the_collection(train: torch.Tensor) -> None:
    detector = PatchCore(input_size=SIZE, coreset_ratio=0.5, max_patches=300).fit(train)
    assert detector.coreset_stats_["patches_seen"] == 12 * 64
    assert detector.coreset_stats_["patches_used"] == 300
    assert detector.memory_bank_.shape[0] == 150


def test_fit_reads_a_one_shot_stream_once(train: torch.Tensor) -> None:
    passes = []

    class Stream:
        def __iter__(self):
            passes.append(1)
            for start in range(0, 12, 4):
                yield train[start:start + 4]

    detector = PatchCore(input_size=SIZE, coreset_ratio=0.25).fit(Stream())
    assert len(passes) == 1
    reference = PatchCore(input_size=SIZE, coreset_ratio=0.25).fit(train)
    assert torch.equal(detector.memory_bank_, reference.memory_bank_)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_save_and_load_identically(index: str, train: torch.Tensor, tmp_path) -> None:
    detector = PatchCore(input_size=SIZE, coreset_ratio=1.0, index=index).fit(torch.cat([train, train.flip(3)]))
    assert detector.memory_bank_.shape[0] >= 1024  # large enough that the approximate index is really used
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=4))
    before = detector.predict(images)
    path = detector.save(tmp_path / "patchcore.safetensors")
    after = PatchCore.load(path).predict(images)
    assert torch.equal(before.pred_score, after.pred_score) and torch.equal(before.anomaly_map, after.anomaly_map)
    exact = PatchCore(**{**detector.get_params(), "index": "flat"})
    exact.memory_bank_, exact.fitted_ = detector.memory_bank_, True
    assert torch.allclose(exact.predict(images).pred_score, before.pred_score, rtol=0.05)


def test_feature_dim_pools_channels(train: torch.Tensor) -> None:
    detector = PatchCore(input_size=SIZE, coreset_ratio=0.25, feature_dim=64).fit(train[:4])
    assert detector.memory_bank_.shape[1] == 64


@pytest.mark.parametrize("params, message", [
    ({"coreset_ratio": 0.0}, r"coreset_ratio must be a finite number in \(0, 1\]"),
    ({"coreset_ratio": 1.5}, r"coreset_ratio must be a finite number in \(0, 1\]"),
    ({"coreset_ratio": math.nan}, "coreset_ratio must be"),
    ({"index": "annoy"}, "index must be one of 'flat', 'ivf', 'hnsw'"),
    ({"num_neighbors": 0}, r"num_neighbors must be an integer in \[1, 1024\]"),
    ({"num_neighbors": 2.0}, "num_neighbors must be"),
    ({"layers": ("blocks.2",)}, "layers must be 2 distinct backbone stage names"),
    ({"layers": "blocks.2"}, "layers must be 2 distinct backbone stage names"),
    ({"max_patches": -5}, r"max_patches must be an integer in \[1, 1000000000\] or None"),
    ({"max_patches": 10**12}, "max_patches must be"),
    ({"sigma": -1.0}, r"sigma must be a finite number in \[0, 64\]"),
    ({"sigma": math.inf}, "sigma must be"),
    ({"sigma": math.nan}, "sigma must be"),
    ({"sigma": 1e9}, "sigma must be"),
    ({"feature_dim": 10**9}, "feature_dim must be"),
    ({"projection_dim": 0}, "projection_dim must be"),
    ({"index_probes": 0}, "index_probes must be"),
    ({"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
    ({"checkpoint_path": 3}, "checkpoint_path must be a file path or None"),
])
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        PatchCore(**params)


def test_default_stages_follow_the_backbone() -> None:
    assert PatchCore().resolved_layers() == ("blocks.2", "blocks.4")
    assert PatchCore(backbone="resnet18").resolved_layers() == ("layer2", "layer3")
    assert PatchCore(backbone="wide_resnet50_2").resolved_layers() == ("layer2", "layer3")
    assert PatchCore().extractor.layer_names == ["blocks.2", "blocks.4"]


def test_checkpoint_path_gives_the_provider_predictions(train: torch.Tensor, lite0_checkpoint) -> None:
    path = lite0_checkpoint
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=9))
    from_file = PatchCore(input_size=SIZE, coreset_ratio=0.25, checkpoint_path=str(path)).fit(train)
    assert from_file.extractor.weights_source.startswith("file:")
    provider = PatchCore(input_size=SIZE, coreset_ratio=0.25).fit(train)
    assert from_file.extractor is not provider.extractor
    torch.testing.assert_close(from_file.memory_bank_, provider.memory_bank_, rtol=1e-5, atol=1e-6)
    ours, theirs = from_file.predict(images), provider.predict(images)
    torch.testing.assert_close(ours.pred_score, theirs.pred_score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.anomaly_map, theirs.anomaly_map, rtol=1e-5, atol=1e-6)
