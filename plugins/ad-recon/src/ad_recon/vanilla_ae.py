"""Convolutional autoencoder with a dense latent code, scored by per-pixel reconstruction error.

Paper: P. Bergmann, S. Löwe, M. Fauser, D. Sattlegger, C. Steger, "Improving Unsupervised Defect
Segmentation by Applying Structural Similarity to Autoencoders", VISAPP 2019 (the L2-AE and
SSIM-AE baselines of MVTec AD, CVPR 2019). Strided 4×4 convolutions halve the resolution down to
a small grid that a single layer maps to a ``latent_dim``-vector (100 in the paper); a mirrored
decoder reconstructs; the anomaly map is the per-pixel L2 or ``1 - SSIM`` error.

Deliberate deviations from the paper:

* Whole images at ``input_size`` instead of random 128×128 crops / patches; the latent grid is
  ``input_size / 2**depth`` (8×8 at 256 px with the default ``depth=5``, as in the paper's 8×8
  before its 100-d code) and is mapped to the code by a linear layer.
* Batch norm after each convolution and resize-convolution upsampling instead of transposed
  convolutions (see :mod:`ad_recon.common`); the 3×3 stride-1 layers between the strided ones are
  optional residual blocks (``residual=True``).
* The paper trains for many epochs with augmentation on 10,000 crops; here ``epochs`` and
  ``augment`` (random flips) are parameters and the budget is the caller's.
* The map is Gaussian-smoothed (``sigma``) and the image score is the top-k mean (or maximum) of
  the map; the paper thresholds the map and reports no image score.
"""

from __future__ import annotations

import torch
from torch import nn

from ad_recon.common import (
    DENSE_CONSTRAINTS,
    LOSS_CONSTRAINT,
    DenseAutoencoder,
    ReconstructionDetector,
    check_input_covers_depth,
    reconstruction_loss,
)

__all__ = ["VanillaAE"]


class VanillaAE(ReconstructionDetector):
    """Convolutional autoencoder (L2-AE / SSIM-AE of Bergmann et al. 2019).

    Args:
        latent_dim: size of the latent code (100 in the paper).
        base_channels: channels of the first level; they double per level up to 256.
        depth: number of stride-2 levels; ``input_size`` must be at least ``2**depth``.
        residual: add a residual block after every level of encoder and decoder.
        loss: training loss, ``"l2"`` (L2-AE) or ``"ssim"`` (SSIM-AE).
        error: per-pixel error for the anomaly map: ``"l2"`` (squared error averaged over RGB),
            ``"l2_distance"`` (the ℓ2 distance, the paper's residual map; the same ranking unsmoothed,
            not after ``sigma``: docs/ad-recon.md) or ``"ssim"``.
        epochs, batch_size, learning_rate, weight_decay: Adam training.
        validation_fraction, patience: hold out this fraction of the good images and stop when
            their loss has not improved for ``patience`` epochs (0 = no early stopping).
        augment: random horizontal/vertical flips during training.
        sigma: Gaussian smoothing of the map (pixels at ``input_size``); 0 = none.
        image_score: ``"max"`` or ``"topk"`` (mean of the top ``topk_fraction`` of the map).
    """

    progress_name = "vanilla_ae"
    parameter_constraints = {**DENSE_CONSTRAINTS, "loss": LOSS_CONSTRAINT}

    def __init__(self, *, input_size: int = 256, latent_dim: int = 100, base_channels: int = 32, depth: int = 5,
                 residual: bool = False, loss: str = "l2", error: str = "l2", epochs: int = 50, batch_size: int = 16,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-5, validation_fraction: float = 0.0,
                 patience: int = 5, augment: bool = False, sigma: float = 4.0, image_score: str = "topk",
                 topk_fraction: float = 0.01, seed: int = 0) -> None:
        self.input_size = input_size
        self.latent_dim = latent_dim
        self.base_channels = base_channels
        self.depth = depth
        self.residual = residual
        self.loss = loss
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
        return DenseAutoencoder(self.image_size, self.latent_dim, self.base_channels, self.depth, self.residual)

    def _training_loss(self, images: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(images, self.network_(images), self.loss)

    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.network_(images)
