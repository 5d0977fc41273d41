"""DifferNet: a normalizing flow on multi-scale image features, scored over test-time transforms.

Rudolph, Wandt and Rosenhahn, "Same Same But DifferNet: Semi-Supervised Defect Detection with
Normalizing Flows", WACV 2021. Each image is fed to a frozen pretrained CNN at three scales (full,
½, ¼); each scale's last feature map is averaged over positions and the three vectors are
concatenated into one descriptor ``y``. A fully connected flow of coupling blocks (8 in the paper,
soft-clamped affine couplings with α = 3, fixed random permutations in between) maps ``y`` to
``z ~ N(0, I)`` and is trained by the negative log-likelihood ``½‖z‖² − log|det J|`` on randomly
transformed good images (rotation; brightness, contrast and saturation jitter) with Adam
(lr 2e-4, betas (0.8, 0.8), eps 1e-4, weight decay 1e-5, as the authors' code).

Image score (paper eq. 5): the mean over ``n_transforms_test`` transformations ``T_i`` of
``−log p_Z(f(T_i(x)))`` = ``½‖z‖²`` per feature dimension (constant dropped). Localisation (paper
sec. 3.4): the gradient of the negative log-likelihood with respect to the input pixels, absolute
values summed over the colour channels and Gaussian-smoothed. The transformations are
differentiable functions of the image, so one backward pass through all of them gives the
gradient already mapped back to the untransformed image (the paper's "rotate back and average").

Deliberate deviations from the paper:

* Backbone: adcore's shared extractor, default offline EfficientNet-Lite0 at its last stage
  ``blocks.6`` (320 channels, stride 32; 960-d descriptor over three scales) instead of AlexNet's
  last convolutional stage (256 channels, 768-d); 256 px instead of 448 px input.
* Descriptors are standardised per dimension with the mean and deviation of augmented good views
  before the flow (a fixed affine map; the likelihood changes by a constant). The paper feeds raw
  features; without it the flow starts far from N(0, I) and needs far more epochs than a CPU has.
* The test-time transformations are one fixed set drawn from ``seed`` and used for every image
  (the paper draws them at random per image), so predictions are reproducible and identical
  after save/load.
* Subnets are ``fc_layers`` hidden ReLU layers of ``fc_hidden`` units (the paper's width is 2048);
  the FrEIA GLOWCouplingBlock with ``atan`` soft clamping implements the paper's coupling.
* ``view_pool > 0`` (off by default) trains on a fixed pool of augmented views instead of fresh
  ones each epoch: a finite sample of the same augmentation distribution, for CPU budgets.
* Default ``epochs=20`` instead of the paper's 192 (24 meta-epochs × 8) on CPU; the measured
  budget is in ``docs/ad-flow.md``. Jitter strengths (0.1 each) are ours: the paper names the
  manipulations but the exact ranges depend on the dataset.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ad_flow.flows import build_fc_flow, flow_nll, frozen_extractor, require_int, require_number, trainable_parameters
from adcore.backbones import DEFAULT_BACKBONE, FeatureExtractor
from adcore.base import BaseDetector
from adcore.inputs import ImageStream
from adcore.ops import gaussian_blur
from adcore.progress import progress
from adcore.training import train_epochs

__all__ = ["DifferNet", "transform_images"]

#: fixed offset so the test-time transformations differ from the first training draws
_TEST_TRANSFORM_SEED_OFFSET = 7919


class DifferNet(BaseDetector):
    """DifferNet detector (see the module docstring for the method and its deviations).

    Args:
        backbone: timm CNN name; ``layer`` is the stage whose map is pooled at every scale.
        n_scales: image scales (full, ½, ¼, …); 3 in the paper.
        coupling_blocks: flow blocks (8 in the paper); ``fc_hidden``/``fc_layers``: subnet size;
            ``clamp``: soft clamping α of the affine scales (3 in the paper).
        epochs, batch_size, lr, weight_decay: Adam training; ``batch_size`` counts images, each
            contributing ``n_transforms`` randomly transformed views.
        n_transforms: transformed views per training image (4 in the paper).
        view_pool: 0 (the paper): fresh random views every epoch, so the backbone runs every epoch.
            ``k > 0``: ``k`` augmented views per image go through the backbone once and the flow
            trains on that fixed pool (batches of ``batch_size × n_transforms`` views), many times
            cheaper per epoch on a CPU.
        n_transforms_test: transformations averaged at test time (64 in the paper).
        rotation_degrees: rotations are drawn uniformly from ±this many degrees.
        brightness, contrast, saturation: jitter factors are drawn from ``[1 − v, 1 + v]``.
        sigma: Gaussian smoothing of the gradient map, in pixels.
        weights, checkpoint_path: backbone weights (see :class:`adcore.backbones.FeatureExtractor`);
            ``weights=None`` is random initialisation, only for tests.
        input_size: side (or ``(h, w)``) images are resized to; seed: seeds everything random.
    """

    #: localisation needs gradients with respect to the input pixels
    inference_mode = False
    predict_batch_size = 8

    def __init__(self, *, backbone: str = DEFAULT_BACKBONE, layer: str = "blocks.6", n_scales: int = 3,
                 coupling_blocks: int = 8, fc_hidden: int = 2048, fc_layers: int = 2, clamp: float = 3.0,
                 epochs: int = 20, batch_size: int = 24, lr: float = 2e-4, weight_decay: float = 1e-5,
                 n_transforms: int = 4, view_pool: int = 0, n_transforms_test: int = 64, rotation_degrees: float = 180.0,
                 brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1, sigma: float = 4.0,
                 weights: str | None = "pretrained", checkpoint_path: str | None = None,
                 input_size: int = 256, seed: int = 0) -> None:
        self.backbone = backbone
        self.layer = layer
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.n_scales = n_scales
        self.coupling_blocks = coupling_blocks
        self.fc_hidden = fc_hidden
        self.fc_layers = fc_layers
        self.clamp = clamp
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.n_transforms = n_transforms
        self.view_pool = view_pool
        self.n_transforms_test = n_transforms_test
        self.rotation_degrees = rotation_degrees
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.sigma = sigma
        self.input_size = input_size
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()
        require_int(self.n_scales, "n_scales", 1, 5)
        require_int(self.coupling_blocks, "coupling_blocks", 1, 64)
        require_int(self.fc_hidden, "fc_hidden", 1, 65_536)
        require_int(self.fc_layers, "fc_layers", 1, 8)
        require_int(self.epochs, "epochs", 1, 100_000)
        require_int(self.batch_size, "batch_size", 1, 4096)
        require_int(self.n_transforms, "n_transforms", 1, 1024)
        require_int(self.view_pool, "view_pool", 0, 4096)
        require_int(self.n_transforms_test, "n_transforms_test", 1, 1024)
        require_number(self.clamp, "clamp", 0.0, 100.0, low_open=True)
        require_number(self.lr, "lr", 0.0, 1.0, low_open=True)
        require_number(self.weight_decay, "weight_decay", 0.0, 1.0)
        require_number(self.rotation_degrees, "rotation_degrees", 0.0, 180.0)
        for name in ("brightness", "contrast", "saturation"):
            require_number(getattr(self, name), name, 0.0, 0.99)
        require_number(self.sigma, "sigma", 0.0, 64.0)

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        images = stream.materialize()
        # Augmented views through the frozen backbone once: ``view_pool`` per image (the training pool),
        # or one per image only to standardise. Standardising each descriptor dimension with the
        # statistics of augmented good views is a fixed affine map in front of the flow (the
        # likelihood changes by a constant) that starts the flow near N(0, I); the statistics must
        # come from augmented views, since a channel that is constant on the untransformed images
        # can vary under rotation and would otherwise be divided by a vanishing deviation.
        started = time.perf_counter()
        per_image = self.view_pool or 1
        generator = torch.Generator().manual_seed(self.seed + 1)
        raw = []
        with torch.no_grad():
            for start in progress(range(0, images.shape[0], self.batch_size), desc="differnet views",
                                  total=-(-images.shape[0] // self.batch_size)):
                views = images[start:start + self.batch_size].repeat_interleave(per_image, dim=0)
                raw.append(self._raw_descriptors(transform_images(views, *self._draw_transforms(views.shape[0],
                                                                                               generator))))
        raw_views = torch.cat(raw)
        self.feature_dim_ = int(raw_views.shape[1])
        self.feature_mean_ = raw_views.mean(0)
        std = raw_views.std(0, unbiased=False)
        self.feature_std_ = std.clamp_min(max(1e-3 * float(std.mean()), 1e-6))
        features_seconds = time.perf_counter() - started
        self._build_modules()
        flow = self.flow_

        # Adam settings of the authors' code (betas 0.8, eps 1e-4)
        optimizer = torch.optim.Adam(trainable_parameters(flow), lr=self.lr, betas=(0.8, 0.8), eps=1e-4,
                                     weight_decay=self.weight_decay)

        def nll(descriptors: torch.Tensor) -> torch.Tensor:
            z, log_jac = flow(descriptors)
            return flow_nll(z, log_jac).mean() / self.feature_dim_

        started = time.perf_counter()
        if self.view_pool:
            pool = (raw_views - self.feature_mean_) / self.feature_std_
            history = train_epochs(nll, pool, optimizer, epochs=self.epochs, batch_size=self.batch_size * self.n_transforms,
                                   seed=self.seed, modules=[flow], desc="differnet")
        else:
            def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
                views = batch.repeat_interleave(self.n_transforms, dim=0)
                return transform_images(views, *self._draw_transforms(views.shape[0], generator))

            def loss_fn(views: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():  # the backbone is frozen: only the flow learns
                    descriptors = self._descriptors(views)
                return nll(descriptors)

            history = train_epochs(loss_fn, images, optimizer, epochs=self.epochs, batch_size=self.batch_size,
                                   seed=self.seed, modules=[flow], augment=augment, desc="differnet")
        self.history_ = history.as_dict()
        self.timing_ = {"features_s": features_seconds, "train_s": time.perf_counter() - started}

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + _TEST_TRANSFORM_SEED_OFFSET)
        params = self._draw_transforms(self.n_transforms_test, generator)
        # Views of several images share one pass (the flow's large weights are read once per pass
        # instead of once per image); a view depends only on its own image, so the gradient of the
        # summed NLL still splits exactly into each image's own gradient.
        # bounds the memory of the backbone's activations kept for backward: 16 views at 128 px,
        # 4 at 256 px (larger passes measured slower per view on a 2-core CPU)
        height, width = images.shape[-2:]
        views_per_pass = max(1, (16 * 128 * 128) // (height * width))
        transforms_per_pass = min(self.n_transforms_test, views_per_pass)
        images_per_pass = max(1, views_per_pass // transforms_per_pass)
        scores, gradients = [], []
        with torch.enable_grad():
            for first in range(0, images.shape[0], images_per_pass):
                pixels = images[first:first + images_per_pass].detach().clone().requires_grad_(True)
                count = pixels.shape[0]
                score = torch.zeros(count)
                gradient = torch.zeros_like(pixels)
                for start in range(0, self.n_transforms_test, transforms_per_pass):
                    part = [p[start:start + transforms_per_pass] for p in params]
                    per_image = part[0].shape[0]
                    views = transform_images(pixels.repeat_interleave(per_image, 0), *[p.repeat(count) for p in part])
                    z, log_jac = self.flow_(self._descriptors(views))
                    # paper eq. 5: score = E_T[-log p_Z(z)]; localisation: gradient of the NLL L(y)
                    score += 0.5 * z.detach().pow(2).sum(1).view(count, per_image).sum(1) / self.feature_dim_
                    nll = flow_nll(z, log_jac).sum() / (self.n_transforms_test * self.feature_dim_)
                    gradient += torch.autograd.grad(nll, pixels)[0]
                scores.append(score / self.n_transforms_test)
                gradients.append(gradient)
        maps = torch.cat(gradients).abs().sum(1)
        return torch.cat(scores), gaussian_blur(maps, self.sigma)

    # -- helpers --------------------------------------------------------------------------------
    def _descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised multi-scale descriptors, the flow's input: ``(B, D)``."""
        return (self._raw_descriptors(images) - self.feature_mean_) / self.feature_std_

    def _raw_descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled last-stage features at ``n_scales`` image scales, concatenated: ``(B, D)``."""
        extractor = self._get_extractor()
        height, width = images.shape[-2:]
        pooled = []
        for scale in range(self.n_scales):
            factor = 2**scale
            scaled = images if scale == 0 else F.interpolate(
                images, size=(max(1, height // factor), max(1, width // factor)), mode="bilinear",
                align_corners=False, antialias=True)
            pooled.append(extractor(scaled)[self.layer].mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def _draw_transforms(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Rotation angles (radians) and brightness/contrast/saturation factors for ``count`` views."""
        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(count, generator=generator)

        angle = uniform(-self.rotation_degrees, self.rotation_degrees) * (math.pi / 180.0)
        return (angle, uniform(1 - self.brightness, 1 + self.brightness), uniform(1 - self.contrast, 1 + self.contrast),
                uniform(1 - self.saturation, 1 + self.saturation))

    def _build_modules(self) -> None:
        self.flow_ = build_fc_flow(int(self.feature_dim_), self.coupling_blocks, hidden=self.fc_hidden,
                                   layers=self.fc_layers, clamp=self.clamp, seed=self.seed)
        self.flow_.eval()

    def _get_extractor(self) -> FeatureExtractor:
        if getattr(self, "_extractor", None) is None:
            self._extractor = frozen_extractor(self.backbone, (self.layer,), self.weights,
                                               None if self.checkpoint_path is None else str(self.checkpoint_path))
        return self._extractor


def transform_images(images: torch.Tensor, angle: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                     saturation: torch.Tensor) -> torch.Tensor:
    """Differentiable per-image colour jitter then rotation about the centre (zero fill), in [0, 1].

    ``angle`` in radians; the factors multiply brightness, contrast (about the mean grey level)
    and saturation (about each pixel's grey value) as torchvision's ``ColorJitter`` does.
    """
    def view(t: torch.Tensor) -> torch.Tensor:
        return t.to(images.dtype).view(-1, 1, 1, 1)

    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    x = (images * view(brightness)).clamp(0, 1)
    grey_mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - grey_mean) * view(contrast) + grey_mean).clamp(0, 1)
    grey = (x * weights).sum(1, keepdim=True)
    x = ((x - grey) * view(saturation) + grey).clamp(0, 1)
    cos, sin = torch.cos(angle).to(images.dtype), torch.sin(angle).to(images.dtype)
    zero = torch.zeros_like(cos)
    # a rotation in pixel space, written in affine_grid's [-1, 1] coordinates (aspect-corrected)
    aspect = images.shape[-2] / images.shape[-1]
    theta = torch.stack([torch.stack([cos, -sin * aspect, zero], 1), torch.stack([sin / aspect, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
