"""SPADE: Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020.

Two nearest-neighbour stages over a frozen ImageNet backbone, nothing trained:

* Image score: the mean Euclidean distance of the test image's global-average-pooled deepest
  feature to its ``image_neighbors`` nearest training images (K = 50 in the paper, clamped to the
  training-set size).
* Pixel map: the feature pyramid (three stages, the coarser ones bilinearly upsampled to the finest
  and concatenated) of every test pixel is compared with the pyramids of all pixels of the
  ``map_images`` nearest training images (found in the image stage); the pixel's anomaly is its
  mean distance to the ``map_neighbors`` (κ) nearest of those gallery features. The map is
  upsampled to the input size and Gaussian-smoothed with σ=4.

Deliberate deviations from the paper:

* Default backbone is EfficientNet-Lite0 (offline weights) instead of WideResNet-50. Its stages at
  stride 4, 8 and 16 (``blocks.1``, ``blocks.2``, ``blocks.4``) stand in for ResNet's
  ``layer1``-``layer3`` and its last stage (``blocks.6``, global-average pooled) for the pooled
  ``layer4`` output; ``layers=None`` picks these stages by stride for any timm CNN.
* ``map_images`` defaults to 5 nearest training images for the pixel gallery (the value common
  reimplementations use); the paper's pixel stage is a few nearest images with κ = 1, and the
  cost per test image grows linearly with it.
* The training pyramids are stored at each stage's own resolution (not upsampled) and upsampled
  only for the few gallery images a test image retrieves, a quarter of the memory at stride 4.
"""

from __future__ import annotations

from typing import Any

import torch

from ad_memory.memory_bank import knn, last_stage, pick_stages
from adcore.backbones import DEFAULT_BACKBONE, FeatureExtractor
from adcore.base import BaseDetector
from adcore.errors import InvalidInputError
from adcore.inputs import ImageStream
from adcore.ops import gaussian_blur, upsample
from adcore.progress import progress

__all__ = ["SPADE"]


class SPADE(BaseDetector):
    """SPADE: image kNN on pooled features, pixel kNN against the nearest images' feature pyramids.

    Args:
        backbone: timm CNN name (default: EfficientNet-Lite0 with offline ImageNet weights).
        layers: three pyramid stages; ``None`` picks the deepest stages at stride 4, 8 and 16.
        global_layer: stage pooled for the image feature; ``None`` picks the last stage.
        weights: backbone weights, as for :class:`adcore.backbones.FeatureExtractor`.
        image_neighbors: K of the image score (mean distance to the K nearest training images).
        map_images: training images whose pyramids form each test image's pixel gallery.
        map_neighbors: κ, gallery features averaged per pixel.
        sigma: Gaussian smoothing of the map, in input pixels.
        input_size: images are resized to this size.
        batch_size: images per backbone batch while fitting.
        seed: unused by the method (it has no randomness); kept for the common interface.
    """

    def __init__(self, *, backbone: str = DEFAULT_BACKBONE, layers: tuple[str, ...] | None = None,
                 global_layer: str | None = None, weights: str | None = "pretrained", image_neighbors: int = 50,
                 map_images: int = 5, map_neighbors: int = 1, sigma: float = 4.0, input_size: int = 256,
                 batch_size: int = 8, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.global_layer = global_layer
        self.weights = weights
        self.image_neighbors = image_neighbors
        self.map_images = map_images
        self.map_neighbors = map_neighbors
        self.sigma = sigma
        self.input_size = input_size
        self.batch_size = batch_size
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.layers is not None and (isinstance(self.layers, str) or len(tuple(self.layers)) < 1):
            raise InvalidInputError(f"layers must be None or a tuple of stage names, got {self.layers!r}")
        for name in ("image_neighbors", "map_images", "map_neighbors", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.sigma, (int, float)) and self.sigma >= 0):
            raise InvalidInputError(f"sigma must be >= 0, got {self.sigma!r}")

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        pooled, pyramids = [], []
        shapes: list[list[int]] = []
        for batch in progress(stream, desc="spade features"):
            vector, maps = self._features(batch)
            pooled.append(vector)
            shapes = [list(m.shape[1:]) for m in maps]
            # one row per image: every stage at its own resolution, flattened side by side
            pyramids.append(torch.cat([m.flatten(1) for m in maps], 1))
        self.image_features_ = torch.cat(pooled)
        self.gallery_ = torch.cat(pyramids)
        del pyramids
        self.gallery_shapes_ = shapes

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vector, maps = self._features(images)
        train_count = self.image_features_.shape[0]
        k_image = min(self.image_neighbors, train_count)
        k_map = min(self.map_images, train_count)
        distance, nearest = knn(vector, self.image_features_, max(k_image, k_map))
        scores = distance[:, :k_image].mean(1)
        grid = tuple(maps[0].shape[-2:])
        query = self._stack(maps, grid)  # (B, C, h, w)
        pixel_maps = []
        for row in range(images.shape[0]):
            gallery = self._stack(self._gallery(nearest[row, :k_map]), grid)  # (K, C, h, w)
            channels = gallery.shape[1]
            gallery_rows = gallery.permute(0, 2, 3, 1).reshape(-1, channels)
            query_rows = query[row].permute(1, 2, 0).reshape(-1, channels)
            pixel, _ = knn(query_rows, gallery_rows, self.map_neighbors)
            pixel_maps.append(pixel.mean(1).view(grid))
        maps_out = upsample(torch.stack(pixel_maps), tuple(images.shape[-2:]))
        return scores, gaussian_blur(maps_out, self.sigma)

    # -- helpers --------------------------------------------------------------------------------
    def _gallery(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """The stored pyramids of training images ``indices``, one ``(K, C, h, w)`` tensor per stage."""
        rows = self.gallery_[indices]
        out, offset = [], 0
        for shape in self.gallery_shapes_:
            size = int(shape[0]) * int(shape[1]) * int(shape[2])
            out.append(rows[:, offset:offset + size].view(-1, *(int(s) for s in shape)))
            offset += size
        return out

    @staticmethod
    def _stack(maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        return torch.cat([upsample(m, grid) for m in maps], 1)

    def _stages(self) -> tuple[tuple[str, ...], str]:
        layers = tuple(self.layers) if self.layers is not None else pick_stages(self.backbone, (4, 8, 16))
        return layers, self.global_layer if self.global_layer is not None else last_stage(self.backbone)

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Global-average-pooled deepest feature ``(B, Cg)`` and the pyramid stages."""
        if getattr(self, "_extractor", None) is None:
            layers, global_layer = self._stages()
            wanted = list(dict.fromkeys([*layers, global_layer]))
            self._extractor = FeatureExtractor(self.backbone, wanted, weights=self.weights)
            self._layer_names = (layers, global_layer)
        layers, global_layer = self._layer_names
        with torch.no_grad():
            found: dict[str, Any] = self._extractor(images)
        vector = found[global_layer].mean((2, 3))
        return vector, [found[name] for name in layers]
