"""Behaviour specific to the reconstruction family: losses, kernels, architectures, parameters."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ad_recon.common import image_score, reconstruction_error, ssim_map
from ad_recon.vae import gaussian_reconstruction_nll, kl_divergence, reparameterize
from ad_recon.wae import mmd_penalty
from adcore.errors import InvalidInputError
from adcore.factory import get_model
from adcore.testing import make_normal_images, paste_defects

TINY = {"input_size": 32, "depth": 3, "base_channels": 4, "batch_size": 8}


# -- errors and scores ----------------------------------------------------------------------------
def test_ssim_is_one_for_identical_images_and_drops_for_noise() -> None:
    images = make_normal_images(2, (32, 32))
    assert torch.allclose(ssim_map(images, images), torch.ones(2, 32, 32), atol=1e-5)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert float(ssim_map(images, noisy).mean()) < 0.5


def test_ssim_matches_the_global_formula_on_constant_regions() -> None:
    # constant images: SSIM reduces to the luminance term (2 mu_x mu_y + c1) / (mu_x² + mu_y² + c1)
    x, y = torch.full((1, 3, 24, 24), 0.2), torch.full((1, 3, 24, 24), 0.6)
    expected = (2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4)
    assert torch.allclose(ssim_map(x, y), torch.full((1, 24, 24), expected), atol=1e-3)


def test_l2_error_is_channel_mean_of_squared_difference() -> None:
    x, y = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    y[0, 0, 1, 2] = 0.6
    error = reconstruction_error(x, y, "l2")
    assert error.shape == (1, 4, 4)
    assert math.isclose(float(error[0, 1, 2]), 0.36 / 3, rel_tol=1e-6) and float(error.sum()) == pytest.approx(0.12)


def test_l2_distance_is_the_euclidean_distance_of_the_rgb_vectors() -> None:
    x, y = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    y[0, 0, 1, 2], y[0, 1, 1, 2], y[0, 2, 3, 0] = 0.3, 0.4, -0.2
    distance = reconstruction_error(x, y, "l2_distance")
    assert distance.shape == (1, 4, 4)
    assert float(distance[0, 1, 2]) == pytest.approx(0.5) and float(distance[0, 3, 0]) == pytest.approx(0.2)
    # unsmoothed it ranks the pixels as the channel-mean squared error does (sqrt(3 * l2))
    assert torch.allclose(distance, (3 * reconstruction_error(x, y, "l2")).sqrt())


def test_image_score_max_and_topk() -> None:
    maps = torch.zeros(1, 10, 10)
    maps[0, 0, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert float(image_score(maps, "max")) == 4.0
    assert float(image_score(maps, "topk", 0.02)) == pytest.approx(3.5)  # 2 of 100 pixels
    assert float(image_score(maps, "topk", 0.001)) == 4.0  # at least one pixel


# -- VAE / WAE ingredients --------------------------------------------------------------------------
def test_kl_matches_torch_distributions() -> None:
    generator = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    assert torch.allclose(kl_divergence(mean, logvar), torch.distributions.kl_divergence(q, p).sum(1), atol=1e-5)


def test_fixed_decoder_nll_is_the_sum_of_squared_errors() -> None:
    images, reconstructions = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert torch.allclose(gaussian_reconstruction_nll(images, reconstructions, "fixed"), torch.full((2,), 48 * 0.25))


def test_calibrated_decoder_uses_the_likelihood_maximising_variance() -> None:
    # sigma-VAE: the shared variance is the batch MSE, the maximiser of the Gaussian likelihood, so
    # any other variance gives a larger NLL; the NLL then grows like D/2 * log(MSE)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=generator)
    reconstructions = images + 0.1 * torch.randn(4, 3, 8, 8, generator=generator)
    nll = gaussian_reconstruction_nll(images, reconstructions, "calibrated").sum()
    squared = (images - reconstructions).pow(2)
    values = squared[0].numel()
    for variance in (0.5 * squared.mean(), 2.0 * squared.mean()):
        other = (0.5 * squared.flatten(1).sum(1) / variance + 0.5 * values * torch.log(variance)).sum()
        assert float(nll) < float(other)
    better = gaussian_reconstruction_nll(images, images + 0.5 * (reconstructions - images), "calibrated").sum()
    assert float(better - nll) == pytest.approx(4 * 0.5 * values * math.log(0.25), rel=1e-4)


def test_reparameterisation_has_the_posterior_moments_and_carries_gradients() -> None:
    torch.manual_seed(0)
    mean = torch.tensor([[1.5, -2.0]]).repeat(20000, 1).requires_grad_()
    logvar = torch.log(torch.tensor([[0.25, 4.0]])).repeat(20000, 1).requires_grad_()
    z = reparameterize(mean, logvar)
    assert torch.allclose(z.mean(0), torch.tensor([1.5, -2.0]), atol=0.05)
    assert torch.allclose(z.std(0), torch.tensor([0.5, 2.0]), atol=0.05)
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None and float(logvar.grad.abs().sum()) > 0


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_is_near_zero_for_the_prior_and_grows_with_a_shift(kernel: str) -> None:
    generator = torch.Generator().manual_seed(0)
    prior = torch.randn(256, 8, generator=generator)
    same = torch.randn(256, 8, generator=generator)
    near = mmd_penalty(same, prior, kernel)
    shifted = mmd_penalty(same + 1.0, prior, kernel)
    far = mmd_penalty(same + 3.0, prior, kernel)
    assert abs(float(near)) < 0.02
    assert float(near) < float(shifted) < float(far)


def test_mmd_with_one_sample_is_zero_not_nan() -> None:
    assert float(mmd_penalty(torch.ones(1, 4), torch.zeros(1, 4))) == 0.0


# -- construction through the factory and parameter checks --------------------------------------------
def test_seed_style_construction_through_the_factory() -> None:
    vae = get_model("vae", latent_dim=32, beta=2.0, input_size=128)
    assert (vae.latent_dim, vae.beta, vae.input_size) == (32, 2.0, 128)
    assert get_model("beta_vae").beta == 4.0
    assert get_model("wae", kernel="rbf").kernel == "rbf"


@pytest.mark.parametrize(("name", "params", "fragment"), [
    ("beta_vae", {"beta": 1.0}, "beta must be a finite number in (1, 10000] (beta = 1 is the plain 'vae')"),
    ("vae", {"beta": 0.0}, "beta must be a finite number in (0, 10000]"),
    ("beta_vae", {"decoder": "bernoulli"}, "decoder must be one of"),
    ("wae", {"kernel": "laplace"}, "kernel must be one of"),
    ("vanilla_ae", {"input_size": 16, "depth": 5}, "at least 2**depth = 32"),
    ("vanilla_ae", {"error": "l1"}, "error must be one of"),
    ("unet_ae", {"skip_levels": 5, "depth": 5}, "skip_levels must be an integer in [0, depth - 1 = 4]"),
    ("unet_ae", {"skip_dropout": 1.0}, "skip_dropout must be a finite number in [0, 1)"),
    ("resnet_ae", {"loss": "bce"}, "loss must be one of 'l2', 'ssim'"),
    ("vae", {"image_score": "mean"}, "image_score must be one of"),
    ("wae", {"validation_fraction": 1.0}, "validation_fraction must be a finite number in [0, 1)"),
])
def test_out_of_range_parameters_are_rejected(name: str, params: dict, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(fragment)):
        get_model(name, **params)


# -- architectures ------------------------------------------------------------------------------------
def test_unet_skips_only_from_the_coarse_levels() -> None:
    unet = get_model("unet_ae", input_size=64, depth=4, base_channels=4, skip_levels=2)._make_network()
    assert unet.skips == [2, 1]  # 1/8 and 1/4 of a depth-4 net; never the finest (1/2) level
    fuse_inputs = [block["fuse"][0].in_channels for block in unet.levels]
    widths = [4, 8, 16, 32]
    assert fuse_inputs == [2 * widths[2], 2 * widths[1], widths[0]]
    plain = get_model("unet_ae", input_size=64, depth=4, base_channels=4, skip_levels=0)._make_network()
    assert plain.skips == [] and all(b["fuse"][0].in_channels == w for b, w in zip(plain.levels, [16, 8, 4], strict=True))


def test_unet_skip_changes_the_output_through_the_coarse_features() -> None:
    torch.manual_seed(0)
    unet = get_model("unet_ae", input_size=32, depth=3, base_channels=4, skip_levels=1)._make_network().eval()
    images = make_normal_images(2, (32, 32))
    with torch.no_grad():
        out = unet(images)
        features = unet.encoder(images)
        assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        # zeroing the skipped level's features changes the output, so the skip is really wired in
        unet.encoder.levels[1].register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        assert not torch.allclose(unet(images), out)
    assert features[1].shape[-1] == 8


def test_dense_models_pass_through_a_latent_of_latent_dim() -> None:
    for name in ("vanilla_ae", "wae"):
        net = get_model(name, latent_dim=7, **TINY)._make_network()
        assert net.encode(torch.rand(3, 3, 32, 32)).shape == (3, 7)
    vae_net = get_model("vae", latent_dim=7, **TINY)._make_network()
    assert vae_net.encode(torch.rand(3, 3, 32, 32)).shape == (3, 14)  # mean and log-variance


# -- training -----------------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_localises_a_defect() -> None:
    images = make_normal_images(16, (32, 32))
    detector = get_model("vanilla_ae", latent_dim=16, epochs=15, learning_rate=3e-3, **TINY).fit(images)
    loss = detector.history_["loss"]
    assert loss[-1] < 0.5 * loss[0]
    # evaluation mode reconstructs as well as training mode did (batch-norm statistics recomputed)
    eval_error = float((detector.reconstruct(images) - images).pow(2).mean())
    assert eval_error < 1.5 * loss[-1]
    defective, masks = paste_defects(make_normal_images(4, (32, 32), seed=3))
    maps = detector.predict(defective).anomaly_map
    assert float(maps[masks > 0].mean()) > 2 * float(maps[masks == 0].mean())


def test_batchnorm_statistics_are_recomputed_from_the_final_weights() -> None:
    from torch import nn

    images = make_normal_images(16, (32, 32))
    detector = get_model("unet_ae", epochs=3, latent_channels=8, **TINY).fit(images)
    layer = detector.network_.encoder.levels[0][0][1]
    assert isinstance(layer, nn.BatchNorm2d) and layer.momentum == 0.1
    with torch.no_grad():
        activations = detector.network_.encoder.levels[0][0][0](images)
    assert torch.allclose(layer.running_mean, activations.mean((0, 2, 3)), atol=1e-5)
    assert int(layer.num_batches_tracked) == 2  # one pass of 16 images in batches of 8


def test_early_stopping_uses_held_out_good_images() -> None:
    images = make_normal_images(16, (32, 32))
    detector = get_model("vae", latent_dim=8, epochs=40, validation_fraction=0.25, patience=1, learning_rate=1e-2,
                         **TINY).fit(images)
    history = detector.history_
    assert len(history["validation"]) == len(history["loss"]) >= 1
    assert history["stopped_early"] and len(history["loss"]) < 40
    assert history["best_epoch"] == len(history["loss"]) - 2  # stopped right after one stale epoch


def test_vae_training_is_stochastic_but_seeded_and_prediction_deterministic() -> None:
    images = make_normal_images(8, (32, 32))
    detector = get_model("vae", latent_dim=8, epochs=2, **TINY).fit(images)
    first, second = detector.predict(images[:2]), detector.predict(images[:2])
    assert torch.equal(first.anomaly_map, second.anomaly_map)  # posterior mean at test time
    other_seed = get_model("vae", latent_dim=8, epochs=2, seed=1, **TINY).fit(images)
    assert not torch.equal(other_seed.predict(images[:2]).pred_score, first.pred_score)


def test_resnet_ae_frozen_backbone_is_not_trained_nor_saved(tmp_path) -> None:
    images = make_normal_images(8, (64, 64))
    detector = get_model("resnet_ae", input_size=64, epochs=1, base_channels=4, latent_channels=8, batch_size=8)
    detector.fit(images)
    before = {k: v.clone() for k, v in detector.extractor.state_dict().items()}
    detector.fit(images)
    assert all(torch.equal(before[k], v) for k, v in detector.extractor.state_dict().items())
    assert not any(key.startswith("encoder.") for key in detector.network_.state_dict())
    assert detector.weights_source_.startswith("offline:")


def test_resnet_ae_fine_tuning_trains_and_saves_the_backbone(tmp_path) -> None:
    from adcore.backbones import FeatureExtractor

    images = make_normal_images(8, (64, 64))
    detector = get_model("resnet_ae", input_size=64, epochs=1, base_channels=4, latent_channels=8, batch_size=8,
                         fine_tune=True, encoder_learning_rate=1e-3)
    detector.fit(images)
    # trainable=True: the same unfolded batch norms as the fine-tuned encoder, so the keys match
    pretrained = FeatureExtractor("tf_efficientnet_lite0", ["blocks.4"], trainable=True).state_dict()
    tuned = detector.network_.encoder.state_dict()
    assert any(not torch.equal(pretrained[k], tuned[k]) for k in pretrained if k.endswith("weight"))
    path = detector.save(tmp_path / "tuned.safetensors")
    loaded = type(detector).load(path)
    assert torch.equal(loaded.predict(images[:2]).anomaly_map, detector.predict(images[:2]).anomaly_map)
