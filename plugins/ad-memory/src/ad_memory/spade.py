"""SPADE: Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020.

Two nearest-neighbour stages over a frozen ImageNet backbone, nothing trained:

* Image score: the mean Euclidean distance of the test image's global-average-pooled deepest
  feature to its ``num_image_neighbors`` nearest training images (K = 50 in the paper, clamped to the
  training-set size).
* Pixel map: the feature pyramid (three stages, the coarser ones bilinearly upsampled to the finest
  and concatenated) of every test pixel is compared with the pyramids of all pixels of the
  ``num_map_images`` nearest training images (found in the image stage); the pixel's anomaly is
  its mean distance to the ``num_map_neighbors`` (κ) nearest of those gallery features. The map is
  upsampled to the input size and Gaussian-smoothed with σ=4.

Deliberate deviations from the paper:

* Default backbone is EfficientNet-Lite0 (offline weights) instead of WideResNet-50. Its stages at
  stride 4, 8 and 16 (``blocks.1``, ``blocks.2``, ``blocks.4``) stand in for ResNet's
  ``layer1``-``layer3`` and its last stage (``blocks.6``, global-average pooled) for the pooled
  ``layer4`` output; ``layers=None`` picks these stages by stride for any timm CNN.
* ``num_map_images`` defaults to 5 nearest training images for the pixel gallery (the value common
  reimplementations use); the paper's pixel stage is a few nearest images with κ = 1, and the
  cost per test image grows linearly with it.
* The training pyramids are stored at each stage's own resolution (not upsampled) and upsampled
  only for the few gallery images a test image retrieves, a quarter of the memory at stride 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ad_memory.exact_knn import direct_knn
from ad_memory.memory_bank import batched_knn
from adcore.backbones import DEFAULT_BACKBONE, deepest_stage, stages
from adcore.feature_detector import FeatureDetector
from adcore.inputs import ImageStream
from adcore.memory import release_free_memory
from adcore.ops import gaussian_blur, upsample
from adcore.params import Integer, Real, Stages, Text
from adcore.progress import progress

__all__ = ["SPADE"]


class SPADE(FeatureDetector):
    """SPADE: image kNN on pooled features, pixel kNN against the nearest images' feature pyramids.

    Args:
        backbone: timm CNN name (default: EfficientNet-Lite0 with offline ImageNet weights).
        layers: three pyramid stages; ``None`` picks the deepest stages at stride 4, 8 and 16.
        global_layer: stage pooled for the image feature; ``None`` picks the backbone's deepest stage.
        weights: ``"pretrained"`` (offline provider), ``"hub"`` (download) or ``None`` (random).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict of the timm backbone; overrides
            ``weights`` (the offline way to use any timm CNN).
        num_image_neighbors: K of the image score (mean distance to the K nearest training images);
            formerly ``image_neighbors``.
        num_map_images: training images whose pyramids form each test image's pixel gallery;
            formerly ``map_images``.
        num_map_neighbors: κ, gallery features averaged per pixel; formerly ``map_neighbors``.
        sigma: Gaussian smoothing of the map, in input pixels.
        input_size: images are resized to this size.
        batch_size: images per backbone batch while fitting.
        seed: unused by the method (it has no randomness); kept for the common interface.
    """

    # stride 4/8/16 and "last": ResNet layer1-layer3, EfficientNet-Lite0 blocks.1/blocks.2/blocks.4
    default_strides = (4, 8, 16)
    stage_pick = "last"
    # the exported pixel kNN's distance blocks grow with the batch (chunk fixed at trace time):
    # deployed consumers feed the graph one image per call (adcore.export)
    export_max_batch = 1
    parameter_constraints = {
        "global_layer": [Text(), Integer(0, 63), None],
        "num_image_neighbors": [Integer(1, 100_000)],
        "num_map_images": [Integer(1, 10_000)],
        "num_map_neighbors": [Integer(1, 10_000)],
        "sigma": [Real(0.0, 64.0)],
    }
    parameter_aliases = {
        "image_neighbors": "num_image_neighbors",
        "map_images": "num_map_images",
        "map_neighbors": "num_map_neighbors",
    }

    def __init__(self, *, backbone: str = DEFAULT_BACKBONE, layers: Sequence[str | int] | None = None,
                 global_layer: str | int | None = None, weights: str | None = "pretrained", checkpoint_path: str | Path | None = None,
                 num_image_neighbors: int = 50, num_map_images: int = 5, num_map_neighbors: int = 1,
                 sigma: float = 4.0, input_size: int = 256, batch_size: int = 8, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.global_layer = global_layer
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.num_image_neighbors = num_image_neighbors
        self.num_map_images = num_map_images
        self.num_map_neighbors = num_map_neighbors
        self.sigma = sigma
        self.input_size = input_size
        self.batch_size = batch_size
        self.seed = seed

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        pooled, pyramids = [], []
        shapes: list[list[int]] = []
        stored = 0
        for batch in progress(stream, desc="spade features"):
            vector, maps = self._features(batch)
            per_image = int(vector.shape[1]) + sum(int(m[0].numel()) for m in maps)
            self._check_fit_memory(stored, batch.shape[0], per_image)
            stored += batch.shape[0]
            pooled.append(vector)
            shapes = [list(m.shape[1:]) for m in maps]
            # one row per image: every stage at its own resolution, flattened side by side
            pyramids.append(torch.cat([m.flatten(1) for m in maps], 1))
        self.image_features_ = torch.cat(pooled)
        self.gallery_ = torch.cat(pyramids)
        del pyramids
        self.gallery_shapes_ = shapes
        release_free_memory()  # the per-batch pieces, freed after joining, stay in glibc's heap otherwise

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vector, maps = self._features(images)
        train_count = self.image_features_.shape[0]
        k_image = min(self.num_image_neighbors, train_count)
        k_map = min(self.num_map_images, train_count)
        # summed directly, not as a GEMM: nearby images' pooled features differ by little beside their
        # norms, and the image score would lose ~1e-4 of itself to cancellation (the bank is small)
        distance, nearest = direct_knn(vector, self.image_features_, max(k_image, k_map))
        scores = distance[:, :k_image].mean(1)
        count, grid = images.shape[0], tuple(maps[0].shape[-2:])
        chosen = nearest[:, :k_map].to(self.gallery_.device)
        channels = sum(int(m.shape[1]) for m in maps)
        step = self._images_per_search(count, k_map * grid[0] * grid[1] * channels * 4, maps[0].device)
        pixel_maps = []
        for first in range(0, count, step):
            # the test images' galleries together: one gather and one upsampling per stage
            query_rows = self._stack_rows([m[first:first + step] for m in maps], grid)  # (b, h*w, C)
            gallery = self._gallery(chosen[first:first + step].reshape(-1))  # (b*K, C_s, h_s, w_s) per stage
            gallery_rows = self._stack_rows(gallery, grid).view(query_rows.shape[0], -1, channels)  # (b, K*h*w, C)
            pixel, _ = batched_knn(query_rows, gallery_rows, self.num_map_neighbors)
            pixel_maps.append(pixel.mean(-1).view(-1, *grid))
        pixel_maps = torch.cat(pixel_maps) if len(pixel_maps) > 1 else pixel_maps[0]
        maps_out = upsample(pixel_maps.to(images.device), tuple(images.shape[-2:]))
        return scores, gaussian_blur(maps_out, self.sigma)

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def fit_memory_bytes(images: int, values_per_image: int) -> int:
        """Bytes ``fit`` holds for ``images`` training images of ``values_per_image`` stored floats
        (pooled feature + every pyramid stage at its own resolution): the per-batch pieces and their
        concatenation exist side by side at the end of the fit, so twice the stored features."""
        return 2 * images * values_per_image * 4

    def _check_fit_memory(self, stored: int, batch: int, values_per_image: int) -> None:
        """Refuse, before a batch is kept, stored features whose memory would not fit: this batch,
        plus the final concatenation of every image so far (earlier batches are resident already)."""
        from adcore.memory import check_memory

        total = stored + batch
        needed = self.fit_memory_bytes(total, values_per_image) - stored * values_per_image * 4
        check_memory(needed, f"spade: the stored feature pyramids ({total} images × {values_per_image} values × 4 bytes, "
                             "held twice while they are joined)",
                     f"lower input_size (now {self.input_size}), train on fewer images or pick shallower layers")

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
    def _images_per_search(count: int, gallery_bytes: int, device: torch.device) -> int:
        """Test images whose galleries are built and searched together. On the CPU as many as keep
        the gallery block near 16 MB (bottle: one image, 14 MB; building it for a batch of 8 at once
        measured 1.6× slower, out of cache); elsewhere the whole batch, one batched GEMM."""
        if device.type != "cpu":
            return count
        return max(1, min(count, (1 << 24) // max(1, gallery_bytes)))

    @staticmethod
    def _stack_rows(maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """The stages upsampled to ``grid`` and concatenated per position: ``(B, h*w, C)``, contiguous."""
        channels = sum(int(m.shape[1]) for m in maps)
        out = torch.empty(maps[0].shape[0], grid[0], grid[1], channels, dtype=maps[0].dtype, device=maps[0].device)
        offset = 0
        for m in maps:  # written straight into the channels-last block: no concatenated NCHW copy
            # upsampled in channels-last layout, so the copy into the rows reads contiguous runs
            # (4x faster than the strided copy from NCHW, same values)
            out[..., offset:offset + m.shape[1]] = upsample(m.contiguous(memory_format=torch.channels_last), grid).permute(0, 2, 3, 1)
            offset += int(m.shape[1])
        return out.view(out.shape[0], -1, channels)

    @staticmethod
    def _stack(maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        return torch.cat([upsample(m, grid) for m in maps], 1)

    def _stage_names(self) -> tuple[tuple[str, ...], str]:
        """The pyramid stages (in the order given) and the global stage, as stage names."""
        names = [stage.name for stage in stages(self.backbone)]

        def name(layer: str | int) -> str | int:
            # an index becomes its name (the extractor's keys); an unknown one is left for the extractor to refuse
            return names[layer] if isinstance(layer, int) and 0 <= layer < len(names) else layer

        global_layer = self.global_layer if self.global_layer is not None else deepest_stage(self.backbone)
        return tuple(name(layer) for layer in self.resolved_layers()), name(global_layer)  # type: ignore[return-value]

    def extractor_layers(self) -> tuple[str | int, ...]:
        """The pyramid stages and the global stage, once each, in network order."""
        layers, global_layer = self._stage_names()
        order = {stage.name: stage.index for stage in stages(self.backbone)}
        wanted = dict.fromkeys([*layers, global_layer])
        return tuple(sorted(wanted, key=lambda layer: order.get(layer, len(order))))  # type: ignore[arg-type]

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Global-average-pooled deepest feature ``(B, Cg)`` and the pyramid stages."""
        layers, global_layer = self._stage_names()
        with torch.no_grad():
            found = self.extractor(images)
        vector = found[global_layer].mean((2, 3))
        return vector, [found[name] for name in layers]

    # -- export (adcore.export) -----------------------------------------------------------------
    def _export_predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_predict`` as a graph: the image search is ``_predict``'s own, the pixel search (faiss in
        ``_predict``) an exact GEMM search over the stored features (initializers of the graph), batched."""
        from ad_memory.exact_knn import bank_chunk, exact_knn

        vector, maps = self._features(images)
        train_count = self.image_features_.shape[0]
        k_image = min(self.num_image_neighbors, train_count)
        k_map = min(self.num_map_images, train_count)
        distance, nearest = direct_knn(vector, self.image_features_, max(k_image, k_map))  # as _predict
        scores = distance[:, :k_image].mean(1)
        grid = tuple(maps[0].shape[-2:])
        count = images.shape[0]
        query = self._stack(maps, grid)  # (B, C, h, w)
        channels = query.shape[1]
        rows = self.gallery_[nearest[:, :k_map].reshape(-1)]  # (B*K, total)
        stages_out, offset = [], 0
        for shape in self.gallery_shapes_:
            size = int(shape[0]) * int(shape[1]) * int(shape[2])
            stages_out.append(upsample(rows[:, offset:offset + size].reshape(-1, *(int(s) for s in shape)), grid))
            offset += size
        gallery = torch.cat(stages_out, 1)  # (B*K, C, h, w)
        gallery_rows = gallery.reshape(count, k_map, channels, -1).permute(0, 1, 3, 2).reshape(count, -1, channels)
        query_rows = query.reshape(count, channels, -1).permute(0, 2, 1)  # (B, h*w, C)
        pixel, _ = exact_knn(query_rows, gallery_rows, self.num_map_neighbors, bank_chunk(query_rows.shape[1]))
        pixel_maps = pixel.mean(-1).reshape(count, *grid)
        return scores, gaussian_blur(upsample(pixel_maps, tuple(images.shape[-2:])), self.sigma)
