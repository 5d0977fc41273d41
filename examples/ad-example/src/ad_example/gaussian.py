"""A diagonal Gaussian over pretrained patch features: the smallest real detector.

Not from a paper; a template. Every patch feature of the good images feeds one mean and one
per-channel variance (streamed sums, so any number of images fits in memory). A test patch's
anomaly is its standardised squared distance to that mean; the image score is the map's maximum.

How a backbone detector is written (copy this):

* derive from :class:`adcore.feature_detector.FeatureDetector`, list ``backbone``, ``layers``,
  ``weights`` and ``checkpoint_path`` in ``__init__`` and store them unchanged; the base class
  declares their constraints and turns ``layers=None`` into the stage at each of
  ``default_strides`` (here the deepest stage at stride 8: EfficientNet-Lite0 ``blocks.2``,
  ResNet ``layer2``), for any timm CNN;
* declare every other parameter in ``parameter_constraints`` (finite ranges) instead of checking
  it by hand; adcore refuses a bad value at construction, with the allowed range;
* keep a renamed parameter working through ``parameter_aliases`` (a DeprecationWarning names the
  new one, for old code and old model files alike);
* read features through ``self.extractor``, adcore's one shared frozen extractor (built on first
  use, never saved in the model file, weights offline or from ``checkpoint_path``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from adcore.feature_detector import FeatureDetector
from adcore.ops import gaussian_blur
from adcore.params import Real, Stages

__all__ = ["GaussianPatchDetector"]


class GaussianPatchDetector(FeatureDetector):
    """Diagonal Gaussian over the patch features of one backbone stage.

    Args:
        backbone: any timm CNN name (``tf_efficientnet_lite0`` has offline weights).
        layers: a one-element tuple naming the stage (or its index); ``None`` = the deepest
            stage at stride 8. ``layer=`` (a single name) is the deprecated old spelling.
        weights: ``"pretrained"`` (offline weights), ``"hub"`` (download from timm's hub) or ``None``.
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict of the timm model.
        input_size: side the images are resized to before the backbone.
        sigma: Gaussian smoothing of the map in pixels (0 = none).
        seed: seed of the (deterministic) fit.
    """

    default_strides = (8,)
    stage_pick = "last"
    parameter_constraints = {
        "layers": [Stages(count=1), None],
        "sigma": [Real(0.0, 64.0)],
    }
    parameter_aliases = {"layer": ("layers", lambda value: None if value is None else (value,))}

    def __init__(self, *, backbone: str = "tf_efficientnet_lite0", layers: Sequence[str | int] | None = None,
                 weights: str | None = "pretrained", checkpoint_path: str | Path | None = None,
                 input_size: int = 256, sigma: float = 4.0, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.input_size = input_size
        self.sigma = sigma
        self.seed = seed

    def _fit(self, stream) -> None:
        total = squares = None
        count = 0
        with torch.no_grad():
            for batch in stream:
                features = self._features(batch)
                flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double()
                total = flat.sum(0) if total is None else total + flat.sum(0)
                squares = (flat**2).sum(0) if squares is None else squares + (flat**2).sum(0)
                count += flat.shape[0]
        mean = total / count
        self.mean_ = mean.float()
        self.variance_ = (squares / count - mean**2).clamp_min(1e-6).float()

    def _predict(self, images):
        features = self._features(images)
        distance = ((features - self.mean_.view(1, -1, 1, 1)) ** 2 / self.variance_.view(1, -1, 1, 1)).mean(1)
        maps = torch.nn.functional.interpolate(distance[:, None], size=images.shape[-2:], mode="bilinear",
                                               align_corners=False)[:, 0]
        maps = gaussian_blur(maps, self.sigma)
        return maps.flatten(1).amax(1), maps

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        extractor = self.extractor
        return extractor(images)[extractor.layer_names[0]]
