"""DifferNet: a normalizing flow on multi-scale image features, scored over test-time transforms.

Rudolph, Wandt and Rosenhahn, "Same Same But DifferNet: Semi-Supervised Defect Detection with
Normalizing Flows", WACV 2021. Each image is fed to a frozen pretrained CNN at three scales (full,
½, ¼); each scale's last feature map is averaged over positions and the three vectors are
concatenated into one descriptor ``y``. A fully connected flow of coupling blocks (8 in the paper,
soft-clamped affine couplings with α = 3, fixed random permutations in between) maps ``y`` to
``z ~ N(0, I)`` and is trained by the negative log-likelihood ``½‖z‖² − log|det J|`` on randomly
transformed good images (rotation; brightness, contrast and saturation jitter) with Adam
(lr 2e-4, betas (0.8, 0.8), eps 1e-4, weight decay 1e-5, as the authors' code).

Image score (paper eq. 5): the mean over ``num_test_transforms`` transformations ``T_i`` of
``−log p_Z(f(T_i(x)))`` = ``½‖z‖²`` per feature dimension (constant dropped). Localisation (paper
sec. 3.4): the gradient of the negative log-likelihood with respect to the input pixels, absolute
values summed over the colour channels and Gaussian-smoothed. The transformations are
differentiable functions of the image, so one backward pass through all of them gives the
gradient already mapped back to the untransformed image (the paper's "rotate back and average").

Deliberate deviations from the paper:

* Backbone: adcore's shared extractor at the backbone's deepest stage (``layers=None``); the
  default is the offline EfficientNet-Lite0, whose deepest stage ``blocks.6`` has 320 channels at
  stride 32 (960-d descriptor over three scales), instead of AlexNet's last convolutional stage
  (256 channels, 768-d); 256 px instead of 448 px input.
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

from ad_flow.flows import build_fc_flow, flow_nll, trainable_parameters
from adcore.backbones import DEFAULT_BACKBONE, deepest_stage
from adcore.feature_detector import FeatureDetector
from adcore.inputs import ImageStream
from adcore.ops import gaussian_blur
from adcore.params import Check, Integer, Real, Stages
from adcore.progress import progress
from adcore.training import train_epochs, training_images

__all__ = ["DifferNet", "transform_images"]

#: fixed offset so the test-time transformations differ from the first training draws
_TEST_TRANSFORM_SEED_OFFSET = 7919


class DifferNet(FeatureDetector):
    """DifferNet detector (see the module docstring for the method and its deviations).

    Args:
        backbone: timm CNN name.
        layers: the one stage whose map is pooled at every scale, as a one-element tuple; ``None``
            (default) is the backbone's deepest stage (Lite0 ``blocks.6``, ResNet ``layer4``).
        num_scales: image scales (full, ½, ¼, …); 3 in the paper.
        coupling_blocks: flow blocks (8 in the paper); ``fc_hidden``/``fc_layers``: subnet size;
            ``clamp``: soft clamping α of the affine scales (3 in the paper).
        epochs, batch_size, learning_rate, weight_decay: Adam training; ``batch_size`` counts images,
            each contributing ``num_transforms`` randomly transformed views.
        num_transforms: transformed views per training image (4 in the paper).
        view_pool: 0 (the paper): fresh random views every epoch, so the backbone runs every epoch.
            ``k > 0``: ``k`` augmented views per image go through the backbone once and the flow
            trains on that fixed pool (batches of ``batch_size × num_transforms`` views), many times
            cheaper per epoch on a CPU.
        num_test_transforms: transformations averaged at test time (64 in the paper).
        rotation_degrees: rotations are drawn uniformly from ±this many degrees.
        brightness, contrast, saturation: jitter factors are drawn from ``[1 − v, 1 + v]``.
        sigma: Gaussian smoothing of the gradient map, in pixels.
        weights: ``"pretrained"`` (offline provider), ``"hub"`` (download) or ``None`` (random
            initialisation, only for tests); checkpoint_path: a local backbone state dict, overriding
            ``weights`` (see :class:`adcore.backbones.FeatureExtractor`).
        input_size: side (or ``(h, w)``) images are resized to; seed: seeds everything random.
    """

    #: localisation needs gradients with respect to the input pixels
    inference_mode = False
    predict_batch_size = 8
    #: ``layers=None``: the deepest stage (see :meth:`resolved_layers`)
    default_strides = (32,)
    stage_pick = "last"
    parameter_constraints = {
        "layers": [Check(Stages(count=1).accepts, "one backbone stage as a one-element tuple, e.g. ('blocks.6',) "
                                                  "or ('layer4',)"), None],
        "num_scales": [Integer(1, 5)],
        "coupling_blocks": [Integer(1, 64)],
        "fc_hidden": [Integer(1, 65_536)],
        "fc_layers": [Integer(1, 8)],
        "clamp": [Real(0.0, 100.0, closed="right")],
        "epochs": [Integer(1, 100_000)],
        "learning_rate": [Real(0.0, 10.0, closed="right")],
        "weight_decay": [Real(0.0, 1.0)],
        "num_transforms": [Integer(1, 1024)],
        "view_pool": [Integer(0, 4096)],
        "num_test_transforms": [Integer(1, 1024)],
        "rotation_degrees": [Real(0.0, 180.0)],
        "brightness": [Real(0.0, 0.99)],
        "contrast": [Real(0.0, 0.99)],
        "saturation": [Real(0.0, 0.99)],
        "sigma": [Real(0.0, 64.0)],
    }
    parameter_aliases = {"layer": ("layers", lambda value: None if value is None else (value,)),
                         "lr": "learning_rate", "n_scales": "num_scales", "n_transforms": "num_transforms",
                         "n_transforms_test": "num_test_transforms"}

    def __init__(self, *, backbone: str = DEFAULT_BACKBONE, layers: tuple[str | int] | None = None, num_scales: int = 3,
                 coupling_blocks: int = 8, fc_hidden: int = 2048, fc_layers: int = 2, clamp: float = 3.0,
                 epochs: int = 20, batch_size: int = 24, learning_rate: float = 2e-4, weight_decay: float = 1e-5,
                 num_transforms: int = 4, view_pool: int = 0, num_test_transforms: int = 64,
                 rotation_degrees: float = 180.0, brightness: float = 0.1, contrast: float = 0.1,
                 saturation: float = 0.1, sigma: float = 4.0, weights: str | None = "pretrained",
                 checkpoint_path: str | None = None, input_size: int = 256, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.num_scales = num_scales
        self.coupling_blocks = coupling_blocks
        self.fc_hidden = fc_hidden
        self.fc_layers = fc_layers
        self.clamp = clamp
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.num_transforms = num_transforms
        self.view_pool = view_pool
        self.num_test_transforms = num_test_transforms
        self.rotation_degrees = rotation_degrees
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.sigma = sigma
        self.input_size = input_size
        self.seed = seed

    def resolved_layers(self) -> tuple[str | int, ...]:
        """``layers`` as given, or the backbone's deepest stage (the one global pooling follows)."""
        if self.layers is not None:
            return tuple(self.layers)
        return (deepest_stage(self.backbone),)

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        images = training_images(stream)  # canonical order: the stream's order and batching do not matter
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
        optimizer = torch.optim.Adam(trainable_parameters(flow), lr=self.learning_rate, betas=(0.8, 0.8), eps=1e-4,
                                     weight_decay=self.weight_decay)

        def nll(descriptors: torch.Tensor) -> torch.Tensor:
            z, log_jac = flow(descriptors)
            return flow_nll(z, log_jac).mean() / self.feature_dim_

        started = time.perf_counter()
        if self.view_pool:
            pool = (raw_views - self.feature_mean_) / self.feature_std_
            history = train_epochs(nll, pool, optimizer, epochs=self.epochs,
                                   batch_size=self.batch_size * self.num_transforms, seed=self.seed, modules=[flow],
                                   desc="differnet", device=self.device_, precision=self.precision)
        else:
            def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
                views = batch.repeat_interleave(self.num_transforms, dim=0)
                return transform_images(views, *self._draw_transforms(views.shape[0], generator))

            def loss_fn(views: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():  # the backbone is frozen: only the flow learns
                    descriptors = self._descriptors(views)
                return nll(descriptors)

            history = train_epochs(loss_fn, images, optimizer, epochs=self.epochs, batch_size=self.batch_size,
                                   seed=self.seed, modules=[flow], augment=augment, desc="differnet",
                                   device=self.device_, precision=self.precision)
        self.history_ = history.as_dict()
        self.timing_ = {"features_s": features_seconds, "train_s": time.perf_counter() - started}

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + _TEST_TRANSFORM_SEED_OFFSET)
        params = self._draw_transforms(self.num_test_transforms, generator)
        # Views of several images share one pass (the flow's large weights are read once per pass
        # instead of once per image); a view depends only on its own image, so the gradient of the
        # summed NLL still splits exactly into each image's own gradient.
        # bounds the memory of the backbone's activations kept for backward: 16 views at 128 px,
        # 4 at 256 px (larger passes measured slower per view on a 2-core CPU)
        height, width = images.shape[-2:]
        views_per_pass = max(1, (16 * 128 * 128) // (height * width))
        transforms_per_pass = min(self.num_test_transforms, views_per_pass)
        images_per_pass = max(1, views_per_pass // transforms_per_pass)
        scores, gradients = [], []
        with torch.enable_grad():
            for first in range(0, images.shape[0], images_per_pass):
                pixels = images[first:first + images_per_pass].detach().clone().requires_grad_(True)
                count = pixels.shape[0]
                score = torch.zeros(count, device=pixels.device)
                gradient = torch.zeros_like(pixels)
                for start in range(0, self.num_test_transforms, transforms_per_pass):
                    part = [p[start:start + transforms_per_pass] for p in params]
                    per_image = part[0].shape[0]
                    views = transform_images(pixels.repeat_interleave(per_image, 0), *[p.repeat(count) for p in part])
                    z, log_jac = self.flow_(self._descriptors(views))
                    # paper eq. 5: score = E_T[-log p_Z(z)]; localisation: gradient of the NLL L(y)
                    score += 0.5 * z.detach().pow(2).sum(1).view(count, per_image).sum(1) / self.feature_dim_
                    nll = flow_nll(z, log_jac).sum() / (self.num_test_transforms * self.feature_dim_)
                    gradient += torch.autograd.grad(nll, pixels)[0]
                scores.append(score / self.num_test_transforms)
                gradients.append(gradient)
        maps = torch.cat(gradients).abs().sum(1)
        return torch.cat(scores), gaussian_blur(maps, self.sigma)

    # -- helpers --------------------------------------------------------------------------------
    def _descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised multi-scale descriptors, the flow's input: ``(B, D)``."""
        return (self._raw_descriptors(images) - self.feature_mean_) / self.feature_std_

    def _raw_descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of the one stage at ``num_scales`` image scales, concatenated: ``(B, D)``."""
        extractor = self.extractor
        height, width = images.shape[-2:]
        pooled = []
        for scale in range(self.num_scales):
            factor = 2**scale
            scaled = images if scale == 0 else F.interpolate(
                images, size=(max(1, height // factor), max(1, width // factor)), mode="bilinear",
                align_corners=False, antialias=True)
            pooled.append(next(iter(extractor(scaled).values())).mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def _draw_transforms(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Rotation angles (radians) and brightness/contrast/saturation factors for ``count`` views."""
        def uniform(low: float, high: float) -> torch.Tensor:  # drawn on the CPU: the same views on every device
            return (low + (high - low) * torch.rand(count, generator=generator)).to(self.device_)

        angle = uniform(-self.rotation_degrees, self.rotation_degrees) * (math.pi / 180.0)
        return (angle, uniform(1 - self.brightness, 1 + self.brightness), uniform(1 - self.contrast, 1 + self.contrast),
                uniform(1 - self.saturation, 1 + self.saturation))

    def _build_modules(self) -> None:
        self.flow_ = build_fc_flow(int(self.feature_dim_), self.coupling_blocks, hidden=self.fc_hidden,
                                   layers=self.fc_layers, clamp=self.clamp, seed=self.seed).to(self.device_)
        self.flow_.eval()

    # -- export (adcore.export) -----------------------------------------------------------------
    #: why the export holds the image score only (adcore.export's score-only artefacts)
    export_score_only = ("its anomaly map is the gradient of the flow's negative log-likelihood with respect to "
                         "the input pixels, computed by autograd at test time, which an ONNX/OpenVINO/TorchScript "
                         "inference graph cannot hold; the image score (the mean NLL over the fixed test "
                         "transforms) is a forward pass and is exported alone")

    def _export_prepare(self) -> None:
        """``_predict``'s fixed test transforms, drawn before tracing (a generator cannot be in a graph)."""
        generator = torch.Generator().manual_seed(self.seed + _TEST_TRANSFORM_SEED_OFFSET)
        self._export_transforms = self._draw_transforms(self.num_test_transforms, generator)
        height, width = self.image_size
        self._export_resizes = [_resize_matrices((height, width), (max(1, height // 2**scale), max(1, width // 2**scale)))
                                for scale in range(1, self.num_scales)]

    def _export_score(self, images: torch.Tensor) -> torch.Tensor:
        """``_predict``'s image score as graph ops, for any batch size: the fixed test transforms as
        constants, broadcast over the batch (no Python loop over images); the rotation grid and the
        antialiased scale-downs as matrix products (ONNX opset 17 has neither affine_grid nor an
        antialiased resize), equal to torch's kernels up to float rounding."""
        angle, brightness, contrast, saturation = self._export_transforms
        count, height, width = self.num_test_transforms, images.shape[-2], images.shape[-1]
        # (N, T, 3, H, W) -> (N*T, 3, H, W): each image under every transform, image-major like _predict
        views = images[:, None].expand(-1, count, -1, -1, -1).reshape(-1, 3, height, width)
        ones = torch.ones_like(images[:, :1, 0, 0])  # (N, 1): broadcasts a transform's factor over the batch

        def per_view(factor: torch.Tensor) -> torch.Tensor:
            return (ones * factor[None].to(images.dtype)).reshape(-1, 1, 1, 1)

        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        x = (views * per_view(brightness)).clamp(0, 1)
        grey_mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        x = ((x - grey_mean) * per_view(contrast) + grey_mean).clamp(0, 1)
        grey = (x * weights).sum(1, keepdim=True)
        x = ((x - grey) * per_view(saturation) + grey).clamp(0, 1)
        x = F.grid_sample(x, _rotation_grids(angle, height, width, ones), mode="bilinear", padding_mode="zeros",
                          align_corners=False)
        pooled = []
        for scale in range(self.num_scales):
            if scale == 0:
                scaled = x
            else:
                rows, cols = self._export_resizes[scale - 1]
                scaled = rows @ x @ cols.T
            pooled.append(next(iter(self.extractor(scaled).values())).mean(dim=(2, 3)))
        z, _ = self.flow_((torch.cat(pooled, dim=1) - self.feature_mean_) / self.feature_std_)
        nll = 0.5 * z.pow(2).sum(1) / self.feature_dim_
        return nll.reshape(-1, count).mean(1)


def _rotation_grids(angle: torch.Tensor, height: int, width: int, ones: torch.Tensor) -> torch.Tensor:
    """``F.affine_grid`` of :func:`transform_images`' rotations (align_corners=False) as one product:
    ``(N*T, H, W, 2)``, the ``T`` grids repeated for each of the ``N`` images ``ones`` stands for."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    aspect = height / width
    theta = torch.stack([torch.stack([cos, -sin * aspect, torch.zeros_like(cos)], 1),
                         torch.stack([sin / aspect, cos, torch.zeros_like(cos)], 1)], 1)  # (T, 2, 3)
    xs = (2 * torch.arange(width, dtype=torch.float32) + 1) / width - 1
    ys = (2 * torch.arange(height, dtype=torch.float32) + 1) / height - 1
    base = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width),
                        torch.ones(height, width)], -1).reshape(-1, 3)  # (H*W, 3)
    grids = torch.einsum("pk,tjk->tpj", base, theta).reshape(-1, height, width, 2)  # (T, H, W, 2)
    return (ones[:, :, None, None, None] * grids[None]).reshape(-1, height, width, 2)


def _resize_matrices(source: tuple[int, int], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Antialiased bilinear resizing (``align_corners=False``) from ``source`` to ``size`` as the
    matrices ``R_h (h, H)``, ``R_w (w, W)`` with ``resized = R_h @ images @ R_w^T``: torch's own
    kernel applied to identities (a separable linear map is its matrices)."""
    (height, width), (out_h, out_w) = source, size
    rows = F.interpolate(torch.eye(height)[None, None], size=(out_h, height), mode="bilinear", align_corners=False,
                         antialias=True)[0, 0]
    cols = F.interpolate(torch.eye(width)[None, None], size=(out_w, width), mode="bilinear", align_corners=False,
                         antialias=True)[0, 0]
    return rows, cols


def transform_images(images: torch.Tensor, angle: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                     saturation: torch.Tensor) -> torch.Tensor:
    """Differentiable per-image colour jitter then rotation about the centre (zero fill), in [0, 1].

    ``angle`` in radians; the factors multiply brightness, contrast (about the mean grey level)
    and saturation (about each pixel's grey value) as torchvision's ``ColorJitter`` does.
    """
    def view(t: torch.Tensor) -> torch.Tensor:
        return t.to(images.dtype).view(-1, 1, 1, 1)

    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
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
