"""U-Net autoencoder with skip connections on the coarse levels only.

Paper: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 — used here as a reconstruction network (as in the U-Net AE baselines
of e.g. Baur et al., "Autoencoders for Unsupervised Anomaly Segmentation in Brain MR Images",
2020). A contracting path of strided convolutions and an expanding path that concatenates encoder
features of the same resolution before each convolution.

Why the skips are restricted. A U-Net with a skip at every level can learn the identity: the
finest skip hands the decoder the input almost pixel for pixel, so a defect is reconstructed as
faithfully as good texture and its error vanishes. Two knobs stop that:

* ``skip_levels`` (default 2): only the ``skip_levels`` coarsest encoder levels (1/16 and 1/8 of
  the input with the default depth 5) are concatenated into the decoder. Those carry layout and
  global appearance (where the object is, its colour), which makes reconstructions far sharper
  than a plain AE's, but at 1/8 resolution or coarser they cannot carry a small defect's detail;
  the fine levels must come from what the decoder learned of normal images.
* ``skip_dropout`` (default 0.25): channel dropout on every skip while training, so the decoder
  cannot rely on any one skip channel and keeps using the bottleneck path.

The bottleneck is spatial (a 1×1 convolution to ``latent_channels`` at 1/32 resolution), not a
flat vector, since the skips already give the decoder spatial layout.

Deliberate deviations from the paper: strided 4×4 convolutions instead of max pooling + two 3×3
convolutions per level, resize-convolution instead of transposed up-convolution, batch norm, and
"same" padding (the paper crops valid convolutions); the output is an RGB image through a sigmoid
trained with L2 or SSIM loss instead of a segmentation map with cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn

from ad_recon.common import (
    ConvBlock,
    ConvEncoder,
    DeconvBlock,
    ReconstructionDetector,
    LOSS_CONSTRAINT,
    channel_widths,
    check_input_covers_depth,
    reconstruction_loss,
    to_output,
)
from adcore.errors import InvalidInputError
from adcore.params import Integer, Real

__all__ = ["UnetAE", "UNet"]


class UNet(nn.Module):
    """Encoder levels finest→coarsest; decoder concatenates the ``skip_levels`` coarsest skips."""

    def __init__(self, size: tuple[int, int], base_channels: int, depth: int, latent_channels: int,
                 skip_levels: int, skip_dropout: float) -> None:
        super().__init__()
        self.size = tuple(size)
        widths = channel_widths(base_channels, depth)
        self.encoder = ConvEncoder(3, widths)
        self.bottleneck = ConvBlock(widths[-1], latent_channels, kernel_size=1)
        # decoder level i upsamples to the resolution of encoder level depth-2-i (1/16, 1/8, ...)
        skip_from = list(range(depth - 2, -1, -1))
        self.skips = skip_from[:skip_levels]
        self.skip_dropout = nn.Dropout2d(skip_dropout) if skip_dropout > 0 else nn.Identity()
        levels, previous = [], latent_channels
        for level in skip_from:
            extra = widths[level] if level in self.skips else 0
            levels.append(nn.ModuleDict({"up": DeconvBlock(previous, widths[level]),
                                         "fuse": ConvBlock(widths[level] + extra, widths[level])}))
            previous = widths[level]
        self.levels = nn.ModuleList(levels)
        self.skip_from = skip_from
        self.head = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                  nn.Conv2d(previous, 3, 3, padding=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        x = self.bottleneck(features[-1])
        for level, block in zip(self.skip_from, self.levels, strict=True):
            x = block["up"](x)
            if level in self.skips:
                skip = features[level]
                if skip.shape[-2:] != x.shape[-2:]:  # odd sizes: align the upsampled map to the skip
                    x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                x = torch.cat([x, self.skip_dropout(skip)], dim=1)
            x = block["fuse"](x)
        return to_output(self.head(x), self.size)


class UnetAE(ReconstructionDetector):
    """U-Net autoencoder (Ronneberger et al. 2015) with coarse-only, dropped-out skips.

    Args:
        base_channels, depth: channels of the first level (doubling, capped at 256) and number
            of stride-2 levels; ``input_size`` must be at least ``2**depth``.
        latent_channels: channels of the spatial bottleneck at 1/``2**depth`` resolution.
        skip_levels: how many of the coarsest levels get a skip connection (0 = a plain AE,
            ``depth - 1`` = every level, which lets anomalies through).
        skip_dropout: channel-dropout probability on the skips while training.
        loss, error, epochs, batch_size, learning_rate, weight_decay, validation_fraction,
            patience, augment, sigma, image_score, topk_fraction: as for
            :class:`ad_recon.vanilla_ae.VanillaAE`.
    """

    progress_name = "unet_ae"
    parameter_constraints = {
        "base_channels": [Integer(1, 1024)],
        "depth": [Integer(2, 8)],
        "latent_channels": [Integer(1, 4096)],
        "skip_levels": [Integer(0, 7)],  # and at most depth - 1: checked in _validate_params
        "skip_dropout": [Real(0.0, 1.0, closed="left")],
        "loss": LOSS_CONSTRAINT,
    }

    def __init__(self, *, input_size: int = 256, base_channels: int = 32, depth: int = 5, latent_channels: int = 64,
                 skip_levels: int = 2, skip_dropout: float = 0.25, loss: str = "l2", error: str = "l2",
                 epochs: int = 50, batch_size: int = 16, learning_rate: float = 1e-3, weight_decay: float = 1e-5,
                 validation_fraction: float = 0.0, patience: int = 5, augment: bool = False, sigma: float = 4.0,
                 image_score: str = "topk", topk_fraction: float = 0.01, seed: int = 0) -> None:
        self.input_size = input_size
        self.base_channels = base_channels
        self.depth = depth
        self.latent_channels = latent_channels
        self.skip_levels = skip_levels
        self.skip_dropout = skip_dropout
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
        if self.skip_levels > self.depth - 1:
            raise InvalidInputError(f"UnetAE: skip_levels must be an integer in [0, depth - 1 = {self.depth - 1}] "
                                    f"for depth={self.depth}, got {self.skip_levels!r}")

    def _make_network(self) -> nn.Module:
        return UNet(self.image_size, self.base_channels, self.depth, self.latent_channels, self.skip_levels,
                    self.skip_dropout)

    def _training_loss(self, images: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(images, self.network_(images), self.loss)

    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.network_(images)
