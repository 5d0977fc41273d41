"""PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

A memory bank of locally aware patch features from a frozen ImageNet backbone, subsampled by a
greedy coreset; a test patch's anomaly is its distance to the nearest memory feature.

* Patch features: two mid-level stages (stride 8 and 16: ``layer2``/``layer3`` of a ResNet,
  ``blocks.2``/``blocks.4`` of EfficientNet-Lite0), each averaged over its 3×3 neighbourhood,
  the coarser one bilinearly upsampled to the finer grid, concatenated, and adaptive-average
  pooled along the channels to ``feature_dim`` when they have more channels than that.
* Memory bank: greedy k-center coreset (``coreset_ratio`` of all patches, default 0.1) chosen in a
  random projection to ``projection_dim`` (128) dimensions; see
  :func:`ad_memory.memory_bank.greedy_coreset` (exact greedy, pruned, constant memory).
* Scoring: faiss nearest neighbour on the CPU (exact ``IndexFlatL2`` by default, ``index="ivf"``/
  ``"hnsw"`` for very large banks); a bank on another device is searched exactly there by one GEMM
  per query chunk (:func:`ad_memory.exact_knn.nearest_rows`). Image score: the largest patch distance ``s*``, reweighted as in the
  paper's eq. 7 by ``1 - softmax(distances from the test patch to the num_neighbors nearest bank
  neighbours of its match)[match]``. Map: patch distances upsampled to the input size and
  Gaussian-smoothed with σ=4.

Deliberate deviations from the paper (and its reference code):

* Default backbone is EfficientNet-Lite0 (offline weights) instead of WideResNet-50; pass
  ``backbone="wide_resnet50_2"`` with hub or checkpoint weights for the paper's setting.
* Neighbourhood aggregation is a 3×3 average pool of each channel. The reference code flattens
  the 3×3×C neighbourhood and adaptive-pools it to 1024 values per stage, which approximately
  averages each channel over its neighbourhood; pooling channels directly is the same idea
  without the per-stage 1024-d intermediate. As in the reference code, the neighbourhood is
  zero-padded, so border patches are averaged with zeros: this shrinks their features and with
  them the distances among the few border patches. Averaging only the in-image neighbours instead
  made the corners of good PIPED images the most anomalous patches (PA_BRG01_RL image AUROC
  0.919 against 1.000 with zero padding; docs/ad-memory.md). Features with fewer channels than
  ``feature_dim`` (152 for Lite0) are kept as they are: pooling up would only repeat channels.
* The random projection is Gaussian (the paper: a sparse Johnson-Lindenstrauss projection); both
  preserve distances the same way in expectation.
* ``max_patches`` (off by default) caps the patches gathered before the coreset by a uniform
  random sample (bottom-k), for training sets too large to hold all patch features.
* The patch features are gathered in the order of the images' content (``adcore.training.content_keys``),
  not in the order they streamed in, and the capped sample draws each patch's priority from the
  seed and its image's content: the bank, the coreset and so the model are the same however the
  caller orders or batches the training images (the paper does not say; its code keeps the
  loader's order, so its coreset changes with it).
* ``num_neighbors=1`` switches the reweighting off (the image score is then ``s*``); with one
  neighbour the paper's weight would always be zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ad_memory.memory_bank import (
    INDEX_KINDS,
    CoresetStats,
    FeatureCollector,
    NearestNeighbourIndex,
    greedy_coreset,
    greedy_coreset_dense,
    random_projection,
)
from adcore.backbones import DEFAULT_BACKBONE
from adcore.feature_detector import FeatureDetector
from adcore.inputs import ImageStream
from adcore.memory import release_free_memory
from adcore.ops import average_pool_neighbourhood, gaussian_blur, upsample
from adcore.params import Integer, Options, Real, Stages
from adcore.progress import progress
from adcore.training import content_keys

__all__ = ["PatchCore"]


class PatchCore(FeatureDetector):
    """PatchCore with a greedy-coreset memory bank and faiss nearest-neighbour scoring.

    Args:
        backbone: timm CNN name (default: EfficientNet-Lite0 with offline ImageNet weights).
        layers: two stages to use; ``None`` picks the deepest stages at stride 8 and 16.
        weights: ``"pretrained"`` (offline provider), ``"hub"`` (download) or ``None`` (random).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict of the timm backbone; overrides
            ``weights`` (the offline way to use any timm CNN).
        feature_dim: channels are adaptive-average pooled down to this many if there are more.
        coreset_ratio: share of patch features kept in the memory bank, in (0, 1].
        projection_dim: dimensions of the random projection the coreset is chosen in.
        max_patches: optional cap on patches gathered before the coreset (a uniform random
            sample, the same for any order of the images); ``None`` keeps all of them.
        num_neighbors: neighbourhood size ``b`` of the image-score reweighting (1 = off).
        index: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"`` (approximate, for huge banks).
        index_probes: IVF lists probed / HNSW efSearch (``None``: 8 / 64).
        sigma: Gaussian smoothing of the map, in input pixels.
        input_size: images are resized to this size.
        batch_size: images per backbone batch while fitting.
        seed: seed for the projection, the coreset start and any sampling.
    """

    # (8, 16) and "last": ResNet layer2/layer3, EfficientNet-Lite0 blocks.2/blocks.4
    default_strides = (8, 16)
    stage_pick = "last"
    # the exported search's distance blocks are ~4 M floats per image (chunk fixed at trace time), so a
    # batch of 8 would hold 8x that: deployed consumers feed the graph one image per call (adcore.export)
    export_max_batch = 1
    parameter_constraints = {
        "layers": [Stages(2), None],
        "feature_dim": [Integer(1, 16384)],
        "coreset_ratio": [Real(0.0, 1.0, closed="right")],
        "projection_dim": [Integer(1, 16384)],
        "max_patches": [Integer(1, 1_000_000_000), None],
        "num_neighbors": [Integer(1, 1024)],
        "index": [Options(*INDEX_KINDS)],
        "index_probes": [Integer(1, 65536), None],
        "sigma": [Real(0.0, 64.0)],
    }

    def __init__(self, *, backbone: str = DEFAULT_BACKBONE, layers: Sequence[str | int] | None = None,
                 weights: str | None = "pretrained", checkpoint_path: str | Path | None = None, feature_dim: int = 1024,
                 coreset_ratio: float = 0.1, projection_dim: int = 128, max_patches: int | None = None,
                 num_neighbors: int = 9, index: str = "flat", index_probes: int | None = None, sigma: float = 4.0,
                 input_size: int = 256, batch_size: int = 8, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.feature_dim = feature_dim
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.max_patches = max_patches
        self.num_neighbors = num_neighbors
        self.index = index
        self.index_probes = index_probes
        self.sigma = sigma
        self.input_size = input_size
        self.batch_size = batch_size
        self.seed = seed

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        generator = torch.Generator().manual_seed(int(self.seed))
        collector = FeatureCollector(self.max_patches, generator, seed=int(self.seed))
        grid = None
        for batch in progress(stream, desc="patchcore features"):
            features = self._embed(batch)  # (B, D, h, w)
            grid = list(features.shape[-2:])
            rows = features.shape[0] * features.shape[2] * features.shape[3]
            self._check_fit_memory(collector.seen, rows, features.shape[1])
            # keyed by image content: the bank (and so the coreset) is the same for any order or batching
            collector.add(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), keys=content_keys(batch))
        total = len(collector)
        dim = collector.chunks()[0].shape[1]
        size = max(1, int(math.ceil(self.coreset_ratio * total)))
        self.coreset_stats_: dict[str, Any] = {"patches_seen": collector.seen, "patches_used": total}
        if size >= total:
            self.projection_ = torch.empty(dim, 0)
            self.memory_bank_ = collector.project(None)
        else:
            projection = random_projection(dim, self.projection_dim, generator) if self.projection_dim < dim else None
            points = collector.project(projection)
            start = int(torch.randint(total, (1,), generator=generator))
            stats = CoresetStats()
            if self.device_.type == "cpu":
                chosen = greedy_coreset(points, size, start=start, overwrite=True, stats=stats, desc="patchcore coreset")
            else:  # the coreset runs where the detector does: the plain loop, one GEMV per pick
                chosen = greedy_coreset_dense(points.to(self.device_), size, start=start, stats=stats,
                                              desc="patchcore coreset")
            del points
            self.memory_bank_ = collector.gather(chosen)
            self.projection_ = projection if projection is not None else torch.empty(dim, 0)
            self.coreset_stats_.update(iterations=stats.iterations, seconds=round(stats.seconds, 3),
                                       iterations_per_second=round(stats.iterations_per_second, 1) if stats.seconds > 0 else None,
                                       touched_fraction=round(stats.touched_fraction, 4))
        self.feature_grid_ = grid
        self._search = None
        # the collected batches (a few MB each, so kept in glibc's heap when freed) go back to the system
        del collector
        release_free_memory()

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._embed(images)
        count, dim, height, width = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(-1, dim)
        index = self._index()
        distance, nearest = index.search(patches, k=1)
        distance = distance.view(count, height * width)
        nearest = nearest.view(count, height * width)
        scores = self._image_scores(patches.view(count, height * width, dim), distance, nearest, index)
        maps = upsample(distance.view(count, height, width), tuple(images.shape[-2:]))
        return scores, gaussian_blur(maps, self.sigma)

    # -- helpers --------------------------------------------------------------------------------
    def _image_scores(self, patches: torch.Tensor, distance: torch.Tensor, nearest: torch.Tensor,
                      index: NearestNeighbourIndex) -> torch.Tensor:
        """Paper eq. 6-7: ``s* = max distance``, weighted by how typical its bank match is.

        Only the argmax patch of each image needs the weight, so the neighbourhood ``N_b(m*)`` is
        one small product ``(B, D) × (D, M)`` against the bank (norms kept by the index), not a
        second index search.
        """
        top = distance.argmax(1)
        rows = torch.arange(distance.shape[0], device=distance.device)
        best = distance[rows, top]
        bank = index.bank
        neighbours = min(int(self.num_neighbors), len(index))
        if neighbours <= 1:
            return best
        test_patch = patches[rows.to(patches.device), top.to(patches.device)].to(bank.device)  # (B, D)
        match = nearest[rows, top].to(bank.device)  # (B,) its nearest bank feature m*
        anchor = bank.index_select(0, match)
        # |m*|² is the same for every bank row of one image, so it is left out of the ranking
        ranking = torch.matmul(anchor, bank.T).mul_(-2.0).add_(index.bank_norms())
        ranking.scatter_(1, match[:, None], float("inf"))  # N_b(m*): m* first, then its nearest others
        others = torch.topk(ranking, neighbours - 1, dim=1, largest=False).indices
        support = torch.cat([match[:, None], others], 1)
        to_support = (bank[support] - test_patch[:, None]).norm(dim=2)  # (B, b)
        weight = 1.0 - torch.softmax(to_support, dim=1)[:, 0]
        return (weight.to(best.device) * best)

    def fit_memory_bytes(self, patches: int, dim: int) -> int:
        """Bytes ``fit`` holds for ``patches`` collected patch features of ``dim`` values (after
        ``max_patches``): the features (float32) plus the coreset's working set, its projected copy
        (``projection_dim`` values a row) and about ten 4-byte per-row vectors (distances, owners,
        norms, cell lists)."""
        kept = patches if self.max_patches is None else min(patches, int(self.max_patches))
        projected = min(int(self.projection_dim), dim)
        return kept * dim * 4 + kept * (projected + 10) * 4

    def _check_fit_memory(self, seen: int, rows: int, dim: int) -> None:
        """Refuse, before a batch is added, a collection whose memory would not fit: what is not
        allocated yet (this batch's features, or the whole ``max_patches`` reservoir at the first
        batch) plus the coreset's working set for every row kept so far."""
        from adcore.memory import check_memory

        if self.max_patches is not None:
            if seen:
                return  # the reservoir was allocated (and checked) at the first batch
            kept = int(self.max_patches)
            needed = self.fit_memory_bytes(kept, dim)
        else:
            kept = seen + rows  # the earlier batches' features are resident already
            needed = rows * dim * 4 + self.fit_memory_bytes(kept, dim) - kept * dim * 4
        check_memory(needed, f"patchcore: the patch features ({kept} patches × {dim} features × 4 bytes) and the "
                             f"coreset's working copy ({min(int(self.projection_dim), dim)} values a patch)",
                     f"cap the patches with max_patches (now {self.max_patches}; e.g. -p max_patches=200000), "
                     f"lower input_size (now {self.input_size}) or train on fewer images")

    def _index(self) -> NearestNeighbourIndex:
        # rebuilt lazily from the bank (after fit, load or a device change), never saved
        if getattr(self, "_search", None) is None:
            # faiss on the CPU; elsewhere the index searches exactly where the bank lives (faiss-cpu has no GPU index)
            self._search = NearestNeighbourIndex(self.memory_bank_, self.index, self.index_probes, seed=int(self.seed))
        return self._search

    def _on_device(self, device: torch.device) -> None:
        self._search = None

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features ``(B, D, h, w)`` on the finer stage's grid."""
        with torch.no_grad():
            maps = list(self.extractor(images).values())
        return self._aggregate(maps)

    def _aggregate(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The stage maps to locally aware patch features: 3×3 average, upsample, concatenate, pool."""
        grid = maps[0].shape[-2:]
        pooled = [upsample(average_pool_neighbourhood(m, 3, zero_padding=True), tuple(grid)) for m in maps]
        features = torch.cat(pooled, 1)
        if features.shape[1] > self.feature_dim:
            count, dim, height, width = features.shape
            flat = features.permute(0, 2, 3, 1).reshape(-1, 1, dim)
            flat = F.adaptive_avg_pool1d(flat, self.feature_dim)
            features = flat.view(count, height, width, self.feature_dim).permute(0, 3, 1, 2)
        return features.contiguous()

    # -- export (adcore.export) -----------------------------------------------------------------
    def _export_predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_predict`` as a graph: the faiss search becomes an exact chunked search over the bank
        (an initializer of the graph), the reweighting of eq. 6-7 the same ops batched. An
        approximate ``index`` ("ivf", "hnsw") exports as the exact search it approximates."""
        from ad_memory.exact_knn import bank_chunk, exact_knn

        features = self._embed(images)
        count, dim, height, width = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(count, height * width, dim)
        bank = self.memory_bank_
        # distance blocks of ~4 M floats per image (bottle: 1,024 patches × 4,096 bank rows): an
        # engine's memory arena keeps the largest block a run needed, so smaller blocks keep a
        # deployed process small (docs/deployment.md measures it)
        chunk = bank_chunk(height * width, budget=1 << 22)
        distance, nearest = exact_knn(patches, bank, 1, chunk)
        distance, nearest = distance[..., 0], nearest[..., 0]  # (B, P)
        top = distance.argmax(1, keepdim=True)
        best = torch.gather(distance, 1, top)[:, 0]
        maps = gaussian_blur(upsample(distance.view(count, height, width), tuple(images.shape[-2:])), self.sigma)
        neighbours = min(int(self.num_neighbors), int(bank.shape[0]))
        if neighbours <= 1:
            return best, maps
        test_patch = torch.gather(patches, 1, top[..., None].expand(count, 1, dim))[:, 0]  # (B, D)
        match = torch.gather(nearest, 1, top)[:, 0]  # (B,) m*
        anchor = bank[match]
        # N_b(m*): m* first, then its nearest bank neighbours other than itself (m* masked out)
        d2 = (anchor * anchor).sum(1, keepdim=True) - 2 * anchor @ bank.T + (bank * bank).sum(1)[None]
        d2 = d2.masked_fill(torch.arange(bank.shape[0])[None] == match[:, None], float("inf"))
        others = torch.topk(d2, neighbours - 1, dim=1, largest=False).indices
        support = torch.cat([match[:, None], others], 1)
        to_support = (bank[support] - test_patch[:, None]).norm(dim=2)  # (B, b)
        weight = 1.0 - torch.softmax(to_support, dim=1)[:, 0]
        return weight * best, maps
