"""PaDiM: conformance, statistics against numpy, Mahalanobis maps, channel subset, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ad_stat.padim import Padim
from adcore.backbones import FeatureExtractor
from adcore.errors import InvalidInputError
from adcore.ops import gaussian_blur, upsample
from adcore.testing import build_registered, check_detector, make_normal_images, paste_defects

SIZE = 64


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_normal_images(10, (SIZE, SIZE), seed=3)


@pytest.fixture(scope="module")
def fitted(images: torch.Tensor) -> Padim:
    return Padim(input_size=SIZE, num_features=24, seed=5).fit([images[i:i + 3] for i in range(0, len(images), 3)])


def embeddings(detector: Padim, images: torch.Tensor) -> np.ndarray:
    """(positions, N, d) float64, straight from the detector's own embedding."""
    with torch.no_grad():
        return detector._embed(images).double().flatten(2).permute(2, 0, 1).numpy()


def test_conformance_with_quick_params() -> None:
    check_detector(lambda: build_registered("padim"))


def test_streamed_statistics_match_numpy(fitted: Padim, images: torch.Tensor) -> None:
    x = embeddings(fitted, images)
    positions, _, dims = x.shape
    assert fitted.mean_.shape == (positions, dims)
    np.testing.assert_allclose(fitted.mean_.numpy(), x.mean(1), rtol=1e-5, atol=1e-5)
    for position in (0, positions // 2, positions - 1):
        covariance = np.cov(x[position].T) + 0.01 * np.eye(dims)  # the paper's Σ + εI, unbiased
        inverse = np.linalg.inv(covariance)
        whitening = fitted.whitening_[position].double().numpy()
        np.testing.assert_allclose(whitening.T @ whitening, inverse, rtol=1e-4, atol=1e-4 * np.abs(inverse).max())
        assert np.allclose(np.triu(whitening, 1), 0)  # a triangular factor, not an arbitrary square root


def test_batching_of_training_data_does_not_change_the_model(fitted: Padim, images: torch.Tensor) -> None:
    # one batch and a predict position chunk of 5 (not a divisor of 256) against batches of 3 and chunks of 256
    at_once = Padim(input_size=SIZE, num_features=24, seed=5, position_chunk=5).fit(images)
    torch.testing.assert_close(at_once.mean_, fitted.mean_, rtol=1e-5, atol=1e-5)
    # float32 sums: a different batching rounds differently; 1e-3 of whitening entries up to 1/√ε = 10
    torch.testing.assert_close(at_once.whitening_, fitted.whitening_, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(at_once.predict(images[:2]).anomaly_map, fitted.predict(images[:2]).anomaly_map,
                               rtol=1e-4, atol=1e-4)


def test_float32_statistics_survive_a_large_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    # features far from zero with a small spread: summing raw x xᵀ in float32 would cancel to noise
    # in Σxxᵀ − Nμμᵀ; centring on the first batch's mean must keep the covariance exact
    generator = torch.Generator().manual_seed(0)
    features = 1000.0 + 0.05 * torch.randn(12, 24, 4, 4, generator=generator)
    detector = Padim(input_size=SIZE, num_features=24, seed=5)
    batches = [make_normal_images(4, (SIZE, SIZE), seed=i) for i in range(3)]
    served = iter(features.split(4))  # one embedding call per batch of 4, in order
    # fit takes the embedding per position, (P, B, d), with its grid
    monkeypatch.setattr(detector, "_embed_positions",
                        lambda batch: (lambda f: (f.flatten(2).permute(2, 0, 1).contiguous(), tuple(f.shape[-2:])))(next(served)))
    detector.fit(batches)
    assert next(served, None) is None  # every feature batch went into the statistics
    x = features.double().flatten(2).permute(2, 0, 1).numpy()
    for position in (0, 7, 15):
        inverse = np.linalg.inv(np.cov(x[position].T) + 0.01 * np.eye(24))
        whitening = detector.whitening_[position].double().numpy()
        np.testing.assert_allclose(whitening.T @ whitening, inverse, rtol=1e-3, atol=1e-3 * np.abs(inverse).max())


def test_map_is_upsampled_smoothed_mahalanobis_distance(fitted: Padim, images: torch.Tensor) -> None:
    probe, _ = paste_defects(images[:2], seed=4)
    x = embeddings(fitted, probe)  # (P, B, d)
    mean = fitted.mean_.double().numpy()
    distances = []
    for position in range(x.shape[0]):
        whitening = fitted.whitening_[position].double().numpy()
        inverse = whitening.T @ whitening
        delta = x[position] - mean[position]
        distances.append(np.sqrt(np.einsum("bi,ij,bj->b", delta, inverse, delta)))
    height, width = fitted.feature_size_
    reference = torch.from_numpy(np.stack(distances, 1).reshape(2, height, width)).float()
    expected = gaussian_blur(upsample(reference, (SIZE, SIZE)), 4.0)
    prediction = fitted.predict(probe)
    torch.testing.assert_close(prediction.anomaly_map, expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(prediction.pred_score, expected.flatten(1).amax(1), rtol=1e-3, atol=1e-3)


def test_position_chunking_gives_the_same_maps(fitted: Padim, images: torch.Tensor) -> None:
    whole = fitted.predict(images[:3]).anomaly_map
    original, fitted.position_chunk = fitted.position_chunk, 7  # not a divisor of the 16×16 positions
    try:
        chunked = fitted.predict(images[:3]).anomaly_map
    finally:
        fitted.position_chunk = original
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_channel_subset_is_seeded_sorted_and_distinct(fitted: Padim, images: torch.Tensor) -> None:
    index = fitted.channel_index_
    assert index.shape == (24,) and index.unique().numel() == 24
    assert bool((index[1:] > index[:-1]).all()) and int(index.max()) < 176 and int(index.min()) >= 0
    same = Padim(input_size=SIZE, num_features=24, seed=5).fit(images[:4])
    other = Padim(input_size=SIZE, num_features=24, seed=6).fit(images[:4])
    assert torch.equal(same.channel_index_, index)
    assert not torch.equal(other.channel_index_, index)
    unseeded = Padim(input_size=SIZE, num_features=24, seed=None).fit(images[:2])  # an unseeded draw, no error
    assert unseeded.channel_index_.shape == (24,) and unseeded.channel_index_.unique().numel() == 24


def test_embedding_is_the_subset_of_the_upsampled_concatenation(fitted: Padim, images: torch.Tensor) -> None:
    extractor = fitted.extractor
    with torch.no_grad():
        levels = list(extractor(images[:2]).values())
        size = levels[0].shape[-2:]
        full = torch.cat([torch.nn.functional.interpolate(level, size=size, mode="nearest") for level in levels], 1)
        assert full.shape[1] == 176  # 24 + 40 + 112 for EfficientNet-Lite0 blocks.1/2/4
        torch.testing.assert_close(fitted._embed(images[:2]), full[:, fitted.channel_index_])


def test_default_layers_are_strides_4_8_16(fitted: Padim) -> None:
    extractor = fitted.extractor
    assert extractor.layer_names == ["blocks.1", "blocks.2", "blocks.4"]
    assert list(extractor.strides.values()) == [4, 8, 16]
    # the papers' ResNet layer1-3: the first stage at each stride (resnet18 has two at stride 4)
    assert Padim(backbone="resnet18").resolved_layers() == ("layer1", "layer2", "layer3")
    assert Padim(layers=("blocks.2",)).resolved_layers() == ("blocks.2",)


def test_old_parameter_name_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="'n_features' was renamed to 'num_features'"):
        detector = Padim(n_features=24)
    assert detector.num_features == 24 and "n_features" not in detector.get_params()


def test_checkpoint_path_gives_the_provider_weights_predictions(fitted: Padim, images: torch.Tensor,
                                                                 tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    # a full timm model holding the offline provider's weights (the part the extractor uses)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    provider = FeatureExtractor("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], trainable=True)
    missing, unexpected = full.load_state_dict(provider.model.state_dict(), strict=False)
    assert not unexpected and missing
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "lite0.safetensors"))
    local = Padim(input_size=SIZE, num_features=24, seed=5, checkpoint_path=tmp_path / "lite0.safetensors")
    local.fit([images[i:i + 3] for i in range(0, len(images), 3)])
    assert local.extractor.weights_source.startswith("file:") and local.extractor is not fitted.extractor
    assert torch.equal(local.channel_index_, fitted.channel_index_)
    ours, theirs = local.predict(images[:3]), fitted.predict(images[:3])
    torch.testing.assert_close(ours.anomaly_map, theirs.anomaly_map, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.pred_score, theirs.pred_score, rtol=1e-5, atol=1e-5)


def test_too_many_channels_is_rejected_at_fit(images: torch.Tensor) -> None:
    with pytest.raises(InvalidInputError, match="num_features=177 exceeds the 176 channels.*1..176"):
        Padim(input_size=SIZE, num_features=177).fit(images[:2])


@pytest.mark.parametrize("params, message", [
    ({"num_features": 0}, r"num_features must be an integer in \[1, 10000\]"),
    ({"epsilon": 0.0}, r"epsilon must be a finite number in \(0, 1000\]"),
    ({"sigma": -1.0}, r"sigma must be a finite number in \[0, 64\]"),
    ({"position_chunk": 0}, "position_chunk must be an integer"),
    ({"layers": "blocks.1"}, "layers must be a non-empty sequence"),
    ({"layers": ("blocks.1", "blocks.1")}, "layers must be a non-empty sequence of distinct"),
    ({"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
    ({"checkpoint_path": 3}, "checkpoint_path must be a file path or None"),
    # not a finite number, or an absurd one: refused at construction, not after the work
    ({"epsilon": float("nan")}, "epsilon must be a finite number"),
    ({"sigma": float("inf")}, "sigma must be a finite number"),
    ({"epsilon": 1e300}, "epsilon must be a finite number"),
    ({"num_features": 10**12}, "num_features must be an integer"),
    ({"num_features": 24.0}, "num_features must be an integer"),
])
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Padim(**params)
