"""A diagonal Gaussian over pretrained patch features: the smallest real detector.

Not from a paper; a template. Every patch feature of the good images feeds one mean and one
per-channel variance (streamed sums, so any number of images fits in memory). A test patch's
anomaly is its standardised squared distance to that mean; the image score is the map's maximum.
"""

from __future__ import annotations

import torch

from adcore.backbones import FeatureExtractor
from adcore.base import BaseDetector
from adcore.errors import InvalidInputError
from adcore.ops import gaussian_blur

__all__ = ["GaussianPatchDetector"]


class GaussianPatchDetector(BaseDetector):
    def __init__(self, *, backbone: str = "tf_efficientnet_lite0", layer: str = "blocks.2", input_size: int = 256,
                 sigma: float = 4.0, seed: int = 0) -> None:
        self.backbone = backbone
        self.layer = layer
        self.input_size = input_size
        self.sigma = sigma
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.sigma < 0:
            raise InvalidInputError(f"sigma must be >= 0, got {self.sigma}")

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

    def _features(self, images):
        if getattr(self, "_extractor", None) is None:
            self._extractor = FeatureExtractor(self.backbone, [self.layer])
        return self._extractor(images)[self.layer]
