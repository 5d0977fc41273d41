"""Variational autoencoder, scored by the per-pixel error of its mean reconstruction.

Paper: D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014; used for anomaly
detection by J. An, S. Cho, "Variational Autoencoder based Anomaly Detection using Reconstruction
Probability", SNU Data Mining Center 2015. The encoder outputs the mean and log-variance of a
diagonal Gaussian posterior q(z|x); a code is drawn with the reparameterisation trick
``z = mu + exp(logvar / 2) * eps`` so the sampling is differentiable; the loss is the negative
ELBO, reconstruction error plus ``beta`` times KL(q(z|x) || N(0, I)) in closed form.

Deliberate deviations:

* Gaussian decoder. Default ``decoder="calibrated"``: its variance is the optimal shared σ² of
  the batch, i.e. the mean squared error (Rybkin, Daniilidis, Levine, "Simple and Effective VAE
  Training with Calibrated Decoders", ICML 2021, "σ-VAE"), which turns the reconstruction term
  into ``D/2 · log(MSE)``. ``decoder="fixed"``: variance 1/2, the reconstruction term is the sum
  of squared errors. Why calibrated by default: with a fixed variance of that size on [0, 1]
  images the KL term outweighs the reconstruction and the decoder settles on an average, blurred
  image; on MVTec bottle that cost the pixel map 0.07 AUROC against the plain AE
  (docs/ad-recon.md). The calibrated decoder weighs the two terms by the ELBO itself instead of
  an arbitrary variance. The logged loss is divided by the number of pixels.
* At test time the image is reconstructed from the posterior mean (no sampling), so scores are
  deterministic; An & Cho average the reconstruction probability over L samples instead. The
  anomaly map is the per-pixel L2 or 1 - SSIM error of that reconstruction, smoothed.
* Network as in :mod:`ad_recon.vanilla_ae` (strided conv encoder, dense code, resize-conv decoder
  with batch norm) instead of the paper's MLPs.
"""

from __future__ import annotations

import torch
from torch import nn

from ad_recon.common import DENSE_CONSTRAINTS, DenseAutoencoder, ReconstructionDetector, check_input_covers_depth
from adcore.params import Options, Real

__all__ = ["VAE", "DECODERS", "gaussian_reconstruction_nll", "kl_divergence", "reparameterize"]

#: decoder likelihoods: variance fitted to the batch (σ-VAE) or fixed at 1/2
DECODERS = ("calibrated", "fixed")

# σ² never goes below this: a perfect reconstruction of a flat batch would otherwise give log(0)
_MIN_VARIANCE = 1e-6


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``mean + sigma * eps`` with ``eps ~ N(0, I)`` drawn from torch's (seeded) generator."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def gaussian_reconstruction_nll(images: torch.Tensor, reconstructions: torch.Tensor, decoder: str) -> torch.Tensor:
    """Per-sample Gaussian negative log-likelihood of ``images`` under the decoder, constants dropped.

    ``"fixed"``: variance 1/2, so the sum of squared errors. ``"calibrated"``: one variance for the
    whole batch set to its maximiser, the mean squared error, giving ``D/2 · log(MSE)`` per sample
    (D = values per image).
    """
    squared_error = (images - reconstructions).pow(2).flatten(1)
    if decoder == "fixed":
        return squared_error.sum(1)
    variance = squared_error.mean().clamp_min(_MIN_VARIANCE)
    per_sample = 0.5 * squared_error.sum(1) / variance + 0.5 * squared_error.shape[1] * variance.log()
    return per_sample


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, in closed form: ``(B,)``."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


class VAE(ReconstructionDetector):
    """Variational autoencoder (Kingma & Welling 2014) for anomaly detection.

    Args:
        latent_dim: dimension of z.
        beta: weight of the KL term (1 = the ELBO; see :class:`ad_recon.beta_vae.BetaVAE`).
        decoder: ``"calibrated"`` (variance = the batch's MSE, σ-VAE) or ``"fixed"`` (variance 1/2).
        base_channels, depth, residual: the conv encoder/decoder (as in ``VanillaAE``).
        error, epochs, batch_size, learning_rate, weight_decay, validation_fraction, patience,
            augment, sigma, image_score, topk_fraction: as for :class:`ad_recon.vanilla_ae.VanillaAE`.
    """

    progress_name = "vae"
    parameter_constraints = {**DENSE_CONSTRAINTS, "beta": [Real(0.0, 1e4, closed="right")],
                             "decoder": [Options(*DECODERS)]}

    def __init__(self, *, input_size: int = 256, latent_dim: int = 100, beta: float = 1.0, decoder: str = "calibrated",
                 base_channels: int = 32, depth: int = 5, residual: bool = False, error: str = "l2", epochs: int = 50, batch_size: int = 16,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-5, validation_fraction: float = 0.0,
                 patience: int = 5, augment: bool = False, sigma: float = 4.0, image_score: str = "topk",
                 topk_fraction: float = 0.01, seed: int = 0) -> None:
        self.input_size = input_size
        self.latent_dim = latent_dim
        self.beta = beta
        self.decoder = decoder
        self.base_channels = base_channels
        self.depth = depth
        self.residual = residual
        self.error = error
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.augment = augment
        self.sigma = sigma
        self.image_score = image_score
        self.topk_fraction = topk_fraction
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()
        check_input_covers_depth(self)

    def _make_network(self) -> nn.Module:
        # the code layer outputs mean and log-variance side by side
        return DenseAutoencoder(self.image_size, self.latent_dim, self.base_channels, self.depth, self.residual,
                                code_features=2 * self.latent_dim)

    def _training_loss(self, images: torch.Tensor) -> torch.Tensor:
        mean, logvar = self._posterior(images)
        reconstructions = self.network_.decode(reparameterize(mean, logvar))
        reconstruction_nll = gaussian_reconstruction_nll(images, reconstructions, self.decoder)
        elbo_terms = reconstruction_nll + self.beta * kl_divergence(mean, logvar)
        return elbo_terms.mean() / images[0].numel()

    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        mean, _ = self._posterior(images)
        return self.network_.decode(mean)

    def _posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.network_.encode(images).chunk(2, dim=1)
        # bound the log-variance so exp() cannot overflow early in training
        return mean, logvar.clamp(-30.0, 20.0)
