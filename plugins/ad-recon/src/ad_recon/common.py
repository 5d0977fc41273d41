"""Shared building blocks and machinery of the reconstruction family (one place, not per model).

* Layers: :class:`ConvBlock` (strided conv down), :class:`DeconvBlock` (resize-convolution up),
  :class:`ResidualBlock`, and :class:`ConvEncoder` / :class:`ConvDecoder` stacks built from them,
  plus :class:`DenseBottleneck` (the flat latent vector of the AE/VAE/WAE papers).
* Errors: :func:`ssim_map` and :func:`reconstruction_error` (per-pixel L2 or 1 - SSIM),
  :func:`image_score` (max or top-k mean of the smoothed map).
* :class:`ReconstructionDetector`: the ``BaseDetector`` every model subclasses. It trains the
  model's network with Adam through :func:`adcore.training.train_epochs` (progress bar with the
  loss, optional early stopping on a held-out split of the good images from
  :func:`adcore.training.split_holdout`, deterministic under ``seed``) and turns reconstructions
  into anomaly maps and image scores. A model file only says how to build its network, what its
  training loss is and how it reconstructs.

Design choices shared by every model (and why):

* Upsampling is bilinear resize followed by a 3×3 convolution rather than a transposed
  convolution, which avoids checkerboard artefacts (Odena et al., Distill 2016); such artefacts
  would show up as a regular error pattern over the whole anomaly map.
* Batch-norm statistics are recomputed after training from the final weights ("precise BN",
  Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): one pass over the training images with
  a cumulative average. Running averages collected during training mix statistics of weights
  that no longer exist; after a short run they make evaluation-mode reconstructions (and thus
  every anomaly map) wrong even though the training loss is low.
* The decoder ends in a sigmoid because inputs are images in [0, 1].
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from adcore.base import BaseDetector
from adcore.errors import InvalidInputError
from adcore.inputs import ImageStream
from adcore.ops import gaussian_blur
from adcore.params import Boolean, ConstraintSpec, Integer, Options, Real
from adcore.training import split_holdout, train_epochs, training_images

__all__ = [
    "ERRORS",
    "IMAGE_SCORES",
    "ConvBlock",
    "DeconvBlock",
    "ResidualBlock",
    "ConvEncoder",
    "ConvDecoder",
    "DenseBottleneck",
    "DenseAutoencoder",
    "channel_widths",
    "ssim_map",
    "reconstruction_error",
    "reconstruction_loss",
    "image_score",
    "flip_augment",
    "recompute_batchnorm",
    "ReconstructionDetector",
    "coarse_grid",
    "to_output",
    "NETWORK_CONSTRAINTS",
    "LOSS_CONSTRAINT",
    "DENSE_CONSTRAINTS",
    "check_input_covers_depth",
]

#: per-pixel error measures for the anomaly map (and, where a model allows it, the training loss):
#: squared error averaged over RGB, 1 - SSIM, and the per-pixel l2 distance sqrt(sum over RGB of the
#: squared error), the residual map of Bergmann et al. (VISAPP 2019; MVTec AD, CVPR 2019)
ERRORS = ("l2", "ssim", "l2_distance")
#: how an image score is read from its anomaly map
IMAGE_SCORES = ("max", "topk")


# -- layers -------------------------------------------------------------------------------------
def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class ConvBlock(nn.Sequential):
    """Conv → batch norm → LeakyReLU(0.2); ``stride=2`` halves the resolution (4×4 kernel)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int | None = None) -> None:
        kernel = kernel_size if kernel_size is not None else (4 if stride == 2 else 3)
        padding = (kernel - stride + 1) // 2 if stride == 2 else kernel // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
            _norm(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )


class DeconvBlock(nn.Sequential):
    """Bilinear ×2 upsampling → 3×3 conv → batch norm → LeakyReLU (resize-convolution)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3×3 conv/BN layers with an identity shortcut (He et al., CVPR 2016)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _norm(channels), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _norm(channels),
        )
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def channel_widths(base_channels: int, depth: int, max_channels: int = 256) -> list[int]:
    """Channels per resolution level: doubling from ``base_channels``, capped at ``max_channels``."""
    return [min(base_channels * 2**level, max_channels) for level in range(depth)]


class ConvEncoder(nn.Module):
    """``depth`` stride-2 :class:`ConvBlock` levels (each optionally followed by a residual block).

    ``forward`` returns the feature map of every level, finest first, so a U-Net can take skips.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], residual: bool = False) -> None:
        super().__init__()
        levels, previous = [], in_channels
        for width in widths:
            layers: list[nn.Module] = [ConvBlock(previous, width, stride=2)]
            if residual:
                layers.append(ResidualBlock(width))
            levels.append(nn.Sequential(*layers))
            previous = width
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: :class:`DeconvBlock` levels back up, each producing the
    width the encoder had at that resolution, and a last resize-convolution straight to RGB and
    a sigmoid (no wide full-resolution layer: it would cost more than the whole rest of the net).

    ``widths`` are the encoder's (finest first); the input has ``in_channels`` (default
    ``widths[-1]``) at the coarsest resolution. The output is resized to ``size`` when the input
    size is not a multiple of ``2**depth``.
    """

    def __init__(self, widths: Sequence[int], out_channels: int = 3, residual: bool = False,
                 in_channels: int | None = None) -> None:
        super().__init__()
        widths = list(widths)
        levels, previous = [], in_channels if in_channels is not None else widths[-1]
        for width in reversed(widths[:-1]):
            layers: list[nn.Module] = [DeconvBlock(previous, width)]
            if residual:
                layers.append(ResidualBlock(width))
            levels.append(nn.Sequential(*layers))
            previous = width
        self.levels = nn.ModuleList(levels)
        self.head = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                  nn.Conv2d(previous, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for level in self.levels:
            x = level(x)
        return to_output(self.head(x), size)


def to_output(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sigmoid, resized to ``size`` if the network's grid does not match it exactly."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)


class DenseBottleneck(nn.Module):
    """Flatten the coarsest feature map → ``Linear`` to ``out_features`` (the latent code), and
    back: ``decode`` maps a latent vector to a ``(C,h,w)`` map through ``Linear`` + LeakyReLU.

    ``out_features`` is ``latent_dim`` for a plain/Wasserstein AE and ``2 * latent_dim`` for a VAE
    (mean and log-variance).
    """

    def __init__(self, channels: int, grid: tuple[int, int], latent_dim: int, out_features: int | None = None) -> None:
        super().__init__()
        self.channels, self.grid = channels, tuple(grid)
        flat = channels * grid[0] * grid[1]
        self.to_latent = nn.Linear(flat, out_features if out_features is not None else latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.LeakyReLU(0.2, inplace=True))

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.to_latent(features.flatten(1))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.from_latent(latent).view(-1, self.channels, *self.grid)


def coarse_grid(size: tuple[int, int], depth: int) -> tuple[int, int]:
    """Spatial size after ``depth`` stride-2 ``ConvBlock`` levels (4×4 kernel, padding 1)."""
    height, width = size
    for _ in range(depth):
        height, width = height // 2, width // 2
    return height, width


class DenseAutoencoder(nn.Module):
    """Conv encoder → flat latent code → conv decoder (the AE, VAE, β-VAE and WAE networks)."""

    def __init__(self, size: tuple[int, int], latent_dim: int, base_channels: int, depth: int,
                 residual: bool = False, code_features: int | None = None) -> None:
        super().__init__()
        self.size = tuple(size)
        widths = channel_widths(base_channels, depth)
        self.encoder = ConvEncoder(3, widths, residual=residual)
        self.bottleneck = DenseBottleneck(widths[-1], coarse_grid(self.size, depth), latent_dim, code_features)
        self.decoder = ConvDecoder(widths, residual=residual)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.bottleneck.encode(self.encoder(images)[-1])

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bottleneck.decode(latent), self.size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))



# -- errors and scores --------------------------------------------------------------------------
def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    grid = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return kernel[:, None] * kernel[None, :]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al., IEEE TIP 2004) of two ``(B,C,H,W)`` batches in [0, 1].

    Gaussian 11×11 window with σ = 1.5 and the paper's constants; reflect padding keeps the input
    size so the map aligns with the image. Returns ``(B,H,W)``, averaged over channels.
    """
    channels = x.shape[1]
    size = min(window, 2 * (min(x.shape[-2:]) // 2) - 1)  # small images: shrink the window to fit
    kernel = _gaussian_window(size, sigma).to(x).expand(channels, 1, size, size)
    pad = size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(1)


def reconstruction_error(images: torch.Tensor, reconstructions: torch.Tensor, error: str = "l2") -> torch.Tensor:
    """Per-pixel error ``(B,H,W)``: squared difference averaged over channels (``"l2"``), ``1 - SSIM``,
    or the Euclidean distance of the RGB vectors (``"l2_distance"``).

    Unsmoothed, ``"l2"`` and ``"l2_distance"`` rank pixels identically (one is a monotone function of
    the other); after the Gaussian smoothing of the map they differ: smoothing the squared error
    lets the few largest residuals (the blurred rim of an object) dominate a neighbourhood more than
    smoothing the distance does.
    """
    if error == "l2":
        return (images - reconstructions).pow(2).mean(1)
    if error == "l2_distance":
        return (images - reconstructions).pow(2).sum(1).sqrt()
    if error == "ssim":
        return 1.0 - ssim_map(images, reconstructions)
    raise InvalidInputError(f"error must be one of {ERRORS}, got {error!r}")


def reconstruction_loss(images: torch.Tensor, reconstructions: torch.Tensor, loss: str = "l2") -> torch.Tensor:
    """Training loss: mean squared error, or mean ``1 - SSIM`` (Bergmann et al., VISAPP 2019)."""
    return reconstruction_error(images, reconstructions, loss).mean()


def image_score(maps: torch.Tensor, mode: str = "topk", topk_fraction: float = 0.01) -> torch.Tensor:
    """Image scores ``(B,)`` from ``(B,H,W)`` maps: the maximum, or the mean of the top fraction."""
    flat = maps.flatten(1)
    if mode == "max":
        return flat.amax(1)
    if mode == "topk":
        count = max(1, int(math.ceil(topk_fraction * flat.shape[1])))
        return flat.topk(count, dim=1).values.mean(1)
    raise InvalidInputError(f"image_score must be one of {IMAGE_SCORES}, got {mode!r}")


def flip_augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips per image, drawn from the training generator."""
    flips = torch.rand(batch.shape[0], 2, generator=generator) < 0.5
    out = batch.clone()
    for index, (horizontal, vertical) in enumerate(flips.tolist()):
        if horizontal:
            out[index] = out[index].flip(-1)
        if vertical:
            out[index] = out[index].flip(-2)
    return out


def recompute_batchnorm(network: nn.Module, forward: Any, images: torch.Tensor, batch_size: int) -> None:
    """Reset every trainable batch-norm layer of ``network`` and re-estimate its statistics as the
    exact average over ``images`` with the final weights (everything else stays in eval mode, so
    dropout is off). Frozen layers (a frozen backbone) are left untouched.
    """
    layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and any(p.requires_grad for p in m.parameters())]
    if not layers or images.shape[0] == 0:
        return
    network.eval()
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the pass
        layer.train()
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            forward(images[start:start + batch_size])
    for layer, momentum in zip(layers, saved, strict=True):
        layer.momentum = momentum
    network.eval()


# -- the shared detector ------------------------------------------------------------------------
class ReconstructionDetector(BaseDetector):
    """Base of the reconstruction family: train a network to reconstruct good images, score by
    per-pixel reconstruction error. Not registered itself.

    Subclasses list their parameters in ``__init__`` (they must include the shared ones read here:
    ``input_size``, ``seed``, ``epochs``, ``batch_size``, ``learning_rate``, ``weight_decay``,
    ``validation_fraction``, ``patience``, ``augment``, ``error``, ``sigma``, ``image_score``,
    ``topk_fraction``), whose constraints are declared here once (:mod:`adcore.params`; a model
    adds its own in ``parameter_constraints``), and implement:

    * ``_make_network() -> nn.Module`` — the untrained network (also used to load a saved one);
    * ``_training_loss(images) -> loss`` — uses ``self.network_``;
    * ``_reconstruct(images) -> reconstructions`` — deterministic, in [0, 1], same size.
    """

    #: name on the progress bar
    progress_name: str = "autoencoder"
    parameter_constraints: ClassVar[Mapping[str, ConstraintSpec]] = {
        # training draws its shuffling and hold-out split from the seed, so it cannot be None here
        "seed": [Integer(0, 2**63 - 1)],
        "epochs": [Integer(1, 100_000)],
        "learning_rate": [Real(0.0, 10.0, closed="right")],
        "weight_decay": [Real(0.0, 10.0)],
        "validation_fraction": [Real(0.0, 1.0, closed="left")],  # 0 switches early stopping off
        "patience": [Integer(1, 100_000)],
        "augment": [Boolean()],
        "error": [Options(*ERRORS)],
        "sigma": [Real(0.0, 64.0)],  # 0 = no smoothing
        "image_score": [Options(*IMAGE_SCORES)],
        "topk_fraction": [Real(0.0, 1.0, closed="right")],
    }

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        images = training_images(stream)  # canonical order: the stream's order and batching do not matter
        train, held_out = split_holdout(images, self.validation_fraction, self.seed) \
            if self.validation_fraction > 0 else (images, images[:0])
        if train.shape[0] == 0:
            raise InvalidInputError(f"{type(self).__name__}: no training images left after holding out "
                                    f"validation_fraction={self.validation_fraction}")
        self.network_ = self._make_network().to(self.device_)  # initial weights drawn on the CPU, then moved
        optimizer = torch.optim.Adam(self._optimizer_groups(), lr=self.learning_rate, weight_decay=self.weight_decay)
        history = train_epochs(
            self._training_loss, train, optimizer, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
            modules=[self.network_], augment=flip_augment if self.augment else None,
            validation_images=held_out if held_out.shape[0] else None,
            patience=self.patience if held_out.shape[0] else None, desc=f"{self.progress_name} fit",
            device=self.device_, precision=self.precision,
        )
        recompute_batchnorm(self.network_, self._reconstruct, train, self.batch_size)
        self.network_.eval()
        self.history_: dict[str, Any] = history.as_dict()

    def _build_modules(self) -> None:
        self.network_ = self._make_network()

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.network_.eval()
        reconstructions = self._reconstruct(images)
        maps = gaussian_blur(self._error_map(images, reconstructions), self.sigma)
        return image_score(maps, self.image_score, self.topk_fraction), maps

    def _error_map(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """Per-pixel error ``(B,H,W)`` before smoothing (models may add error kinds)."""
        return reconstruction_error(images, reconstructions, self.error)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions of a ``(B,3,H,W)`` batch in [0, 1] at ``input_size`` (for figures), on the CPU."""
        self._check_fitted("reconstruct")
        from adcore.inputs import resize_images, validate_images

        images = resize_images(validate_images(images, where="reconstruct"), self.image_size).to(self.device_)
        self.network_.eval()
        with torch.no_grad():
            return self._reconstruct(images).cpu()

    # -- for subclasses -------------------------------------------------------------------------
    def _optimizer_groups(self) -> list[dict[str, Any]]:
        """Adam parameter groups (one group of every trainable parameter unless overridden)."""
        return [{"params": [p for p in self.network_.parameters() if p.requires_grad]}]

    @abstractmethod
    def _make_network(self) -> nn.Module:
        """The untrained network (also built to load a saved one into)."""

    @abstractmethod
    def _training_loss(self, images: torch.Tensor) -> torch.Tensor:
        """The loss of one training batch, through ``self.network_``."""

    @abstractmethod
    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstructions in [0, 1] at the input's size."""


#: constraints of the convolutional encoder/decoder the from-scratch models share
NETWORK_CONSTRAINTS: dict[str, ConstraintSpec] = {
    "base_channels": [Integer(1, 1024)],
    "depth": [Integer(1, 8)],
    "residual": [Boolean()],
}
#: the training losses a per-pixel reconstruction model may use
LOSS_CONSTRAINT: ConstraintSpec = [Options("l2", "ssim")]
#: constraints of the dense-code models (AE, VAE, beta-VAE, WAE)
DENSE_CONSTRAINTS: dict[str, ConstraintSpec] = {**NETWORK_CONSTRAINTS, "latent_dim": [Integer(1, 16_384)]}


def check_input_covers_depth(detector: ReconstructionDetector) -> None:
    """``depth`` stride-2 levels need at least ``2**depth`` pixels per side (a check of two parameters)."""
    if min(detector.image_size) < 2**detector.depth:
        raise InvalidInputError(f"{type(detector).__name__}: input_size must be at least 2**depth = "
                                f"{2**detector.depth} pixels per side for depth={detector.depth}, got "
                                f"{detector.input_size!r}; lower depth or raise input_size")
