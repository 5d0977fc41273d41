"""PaDiM: Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021.

Every patch position (i, j) of the training images gets a multivariate Gaussian over its embedding
vectors; a test patch's anomaly is its Mahalanobis distance to the Gaussian of its position.

As in the paper:
- embeddings are the features of the first three backbone stages (strides 4/8/16; ResNet layer1–3,
  for EfficientNet-Lite0 ``blocks.1``/``blocks.2``/``blocks.4``), the coarser ones upsampled to the
  finest grid and concatenated (176 channels for Lite0);
- a random subset of ``num_features`` channels is kept (default 100, the paper's d for ResNet18);
  the subset is drawn once under ``seed`` and saved with the model;
- per position: mean μ and covariance Σ = (1/(N−1)) Σ (x−μ)(x−μ)ᵀ + εI with ε = 0.01;
- the anomaly map is the Mahalanobis distance √((x−μ)ᵀ Σ⁻¹ (x−μ)) per position, upsampled
  bilinearly to the input size and smoothed by a Gaussian of σ = 4; the image score is its maximum.

Deliberate deviations (none changes the model's numbers beyond float rounding):
- Statistics are streamed: per batch only the sums Σx and Σxxᵀ per position are added, so memory
  is O(positions·d²) whatever the number of training images, instead of stacking all N embeddings
  as the reference code does. The features are centred on the first batch's mean before they are
  summed, so the float32 sums hold deviations, not raw values: Σxxᵀ − Nμμᵀ then loses nothing to
  cancellation (checked against a float64 reference in the tests). The outer-product sums are
  added in place by one BLAS call per batch (``baddbmm_``).
- Channels are selected *before* upsampling (upsampling acts per channel, so this is the same
  embedding), which avoids building the full 176-channel tensor.
- The inverse is stored as the whitening matrix W = L⁻¹ of the Cholesky factor Σ = LLᵀ, computed
  once at fit in float64, one chunk of positions at a time, and written over that chunk's sums (the
  statistics and the result never exist side by side). Then (x−μ)ᵀ Σ⁻¹ (x−μ) = ‖W(x−μ)‖², which
  costs the same as with Σ⁻¹, is never negative through rounding and needs no clamping.
- Coarser levels are upsampled with nearest-neighbour interpolation, as in the authors' code
  (the paper only says "upsampled").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from adcore.backbones import FeatureExtractor
from adcore.errors import InvalidInputError
from adcore.feature_detector import FeatureDetector
from adcore.inputs import ImageStream
from adcore.memory import release_free_memory
from adcore.ops import gaussian_blur, upsample
from adcore.params import Integer, Real
from adcore.progress import progress

__all__ = ["Padim"]

#: positions per float64 Cholesky chunk at fit: its five (chunk, d, d) temporaries are ~20 MB at
#: d = 100, a quarter of what a predict-sized chunk of 256 takes, at the same speed
_WHITENING_CHUNK = 64


class Padim(FeatureDetector):
    """PaDiM: a Gaussian per patch position over concatenated multi-scale features.

    Args:
        backbone: timm CNN name; the default ships offline with ImageNet weights.
        layers: stage names or indices, or ``None`` for the first stage at each of strides 4/8/16
            (ResNet ``layer1..3``, EfficientNet-Lite0 ``blocks.1``/``blocks.2``/``blocks.4``).
        weights: ``"pretrained"`` (the offline provider), ``"hub"`` (download from timm's hub) or
            ``None`` (random initialisation, for tests).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict of the timm model; overrides
            ``weights``.
        num_features: channels kept from the concatenation (random subset, drawn under ``seed``;
            formerly ``n_features``).
        epsilon: the ridge εI added to every covariance.
        sigma: Gaussian smoothing of the upsampled map (0 turns it off).
        input_size: images are resized to this side (or ``(h, w)``) before the backbone.
        batch_size: at most this many images per backbone pass while fitting (larger batches from
            the caller's loader are split), which bounds activation memory.
        position_chunk: positions per Mahalanobis batch; bounds the temporary memory of predict.
        seed: draws the channel subset.
    """

    #: images per backbone pass in predict: per-image speed is flat beyond this, memory is not
    predict_batch_size = 8
    # the exported graph's whitening holds (batch x positions x channels) floats per chunk and OpenVINO
    # and ONNX Runtime keep the backbone's maps of the whole batch: calls of four images measured about a
    # quarter less peak memory than calls of eight (504 -> 370 MB) at the same ms/image (docs/deployment.md)
    export_max_batch = 4
    #: both papers' "first three stages": ResNet layer1-3
    default_strides = (4, 8, 16)
    stage_pick = "first"
    parameter_constraints = {
        "num_features": [Integer(1, 10_000)],
        "epsilon": [Real(0.0, 1e3, closed="right")],
        "sigma": [Real(0.0, 64.0)],
        "position_chunk": [Integer(1, 1_000_000)],
    }
    parameter_aliases = {"n_features": "num_features"}

    def __init__(self, *, backbone: str = "tf_efficientnet_lite0", layers: Sequence[str | int] | None = None,
                 weights: str | None = "pretrained", checkpoint_path: str | Path | None = None,
                 num_features: int = 100, epsilon: float = 0.01, sigma: float = 4.0, input_size: int = 256,
                 batch_size: int = 16, position_chunk: int = 256, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.num_features = num_features
        self.epsilon = epsilon
        self.sigma = sigma
        self.input_size = input_size
        self.batch_size = batch_size
        self.position_chunk = position_chunk
        self.seed = seed

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        extractor = self.extractor
        total = sum(extractor.channels.values())
        if self.num_features > total:
            raise InvalidInputError(f"num_features={self.num_features} exceeds the {total} channels of layers "
                                    f"{extractor.layer_names} of {self.backbone}; choose 1..{total}")
        # seed=None: an unseeded draw from the global stream, like every other random choice then
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        self.channel_index_ = torch.randperm(total, generator=generator)[: self.num_features].sort().values
        self._split_index = None

        shift = sum_x = sum_outer = None
        count = 0
        with torch.no_grad():
            for images in progress(stream, desc="padim: statistics", total=None):
                for batch in images.split(self.batch_size):  # bounds the backbone's activation memory
                    # (P, B, d) laid out contiguously: bmm on a permuted view takes a strided
                    # fallback about 20x slower than the BLAS path
                    x, grid = self._embed_positions(batch)
                    self.feature_size_ = list(grid)
                    if shift is None:
                        self._check_statistics_memory(x.shape[0], x.shape[2])
                        # centring on a first estimate of the mean keeps Σxxᵀ − N μμᵀ free of cancellation
                        shift = x.mean(1)
                        sum_x = torch.zeros_like(shift, dtype=torch.float64)
                        sum_outer = torch.zeros(x.shape[0], x.shape[2], x.shape[2], dtype=torch.float32, device=x.device)
                    x.sub_(shift[:, None])  # in place: one batch of embeddings alive at a time, not three
                    sum_x += x.sum(1, dtype=torch.float64)
                    sum_outer.baddbmm_(x.transpose(1, 2), x)  # += Σ over the batch of x xᵀ, per position
                    count += x.shape[1]
                    del x
        self.n_train_images_ = count
        mean_shifted = sum_x / count
        self.mean_ = (mean_shifted + shift.double()).float()  # (P, d)
        del sum_x, shift
        release_free_memory()  # the backbone's freed activations: the whitening's chunks need none of that heap
        self.whitening_ = self._whitening(sum_outer, mean_shifted, count)
        # the backbone's activations and the float64 chunks were freed in pieces small enough for
        # glibc to keep in its heap; hand them back so the process is not ~250 MB larger from here on
        release_free_memory()

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, grid = self._embed_positions(images)  # (P, B, d); contiguous for the BLAS bmm path
        return self._scores_and_maps(self._squared_distances(x), grid, tuple(images.shape[-2:]))

    # -- export (adcore.export) -----------------------------------------------------------------
    def _export_predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_predict`` as a graph; for OpenVINO with each whitening matrix applied from the left.

        OpenVINO repacks a constant right-hand MatMul operand for every input shape it meets (a copy
        of the 164 MB of whitening matrices per batch size: 459 → 300 MB at batch 1 on bottle without
        it); ONNX Runtime runs the left-hand form at half the speed at batch 1, so its graph is
        ``_predict``'s. Same values to float rounding either way (export's parity check).
        """
        from adcore.export.graph import export_target

        x, grid = self._embed_positions(images)  # (P, B, d)
        squared = self._squared_distances(x, whitening_on_left=export_target() == "openvino")
        return self._scores_and_maps(squared, grid, tuple(images.shape[-2:]))

    # -- helpers --------------------------------------------------------------------------------
    def _squared_distances(self, x: torch.Tensor, *, whitening_on_left: bool = False) -> torch.Tensor:
        """Squared Mahalanobis distances ``(P, B)`` of embeddings ``(P, B, d)``, a position chunk at a time."""
        squared = torch.empty(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        for start in range(0, x.shape[0], self.position_chunk):
            stop = start + self.position_chunk
            delta = x[start:stop] - self.mean_[start:stop, None]
            whitening = self.whitening_[start:stop]
            if whitening_on_left:  # W_p (x_b − μ_p)ᵀ as (p, d, B)
                squared[start:stop] = torch.matmul(whitening, delta.transpose(1, 2)).pow(2).sum(1)
            else:  # (p, B, d) @ (p, d, d)ᵀ: row b of the result is W_p (x_b − μ_p)
                squared[start:stop] = torch.bmm(delta, whitening.transpose(1, 2)).pow(2).sum(-1)
        return squared

    def _scores_and_maps(self, squared: torch.Tensor, grid: tuple[int, int],
                         size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """From squared Mahalanobis distances ``(P, B)``: the smoothed maps at ``size`` and their maxima."""
        distance = squared.sqrt().T.reshape(squared.shape[1], *grid)
        maps = gaussian_blur(upsample(distance, size), self.sigma)
        return maps.flatten(1).amax(1), maps

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """The kept channels of the concatenated, upsampled multi-level features: ``(B, d, h, w)``."""
        x, grid = self._embed_positions(images)
        return x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], *grid)

    def _embed_positions(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The same embedding laid out per position, ``(P, B, d)`` contiguous, written level by level
        into one block (no concatenated copy, no separate transposed copy), and its grid ``(h, w)``."""
        extractor = self.extractor
        levels = list(extractor(images).values())
        size = levels[0].shape[-2:]
        parts = [(level, index) for level, index in zip(levels, self._level_indices(extractor), strict=True) if index.numel()]
        dims = sum(int(index.numel()) for _, index in parts)
        out = torch.empty(size[0] * size[1], images.shape[0], dims, dtype=levels[0].dtype, device=levels[0].device)
        offset = 0
        for level, index in parts:
            chosen = level.index_select(1, index.to(level.device))
            if chosen.shape[-2:] != size:
                chosen = F.interpolate(chosen, size=size, mode="nearest")
            out[:, :, offset:offset + index.numel()] = chosen.flatten(2).permute(2, 0, 1)
            offset += int(index.numel())
        return out, (int(size[0]), int(size[1]))

    def _on_device(self, device: torch.device) -> None:
        self._split_index = None  # derived from channel_index_: rebuilt where the statistics now live

    def _level_indices(self, extractor: FeatureExtractor) -> list[torch.Tensor]:
        """``channel_index_`` split into per-level local indices (concatenation order is kept)."""
        if getattr(self, "_split_index", None) is None:
            bounds = torch.tensor([0] + list(extractor.channels.values())).cumsum(0)
            index = self.channel_index_
            self._split_index = [index[(index >= lo) & (index < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        return self._split_index

    def _check_statistics_memory(self, positions: int, dims: int) -> None:
        """Refuse, before allocating, statistics that would not fit: positions × d² × 4 bytes."""
        from adcore.memory import check_memory

        needed = positions * dims * dims * 4 + positions * dims * 16  # Σxxᵀ (float32) + sums and mean
        check_memory(needed, f"padim: the covariances ({positions} positions × {dims}² features × 4 bytes)",
                     f"lower num_features (the memory grows with its square; now {self.num_features}) or "
                     f"input_size (now {self.input_size})")

    def _whitening(self, sum_outer: torch.Tensor, mean: torch.Tensor, count: int) -> torch.Tensor:
        """W = L⁻¹ with LLᵀ = Σ + εI per position, computed in float64 one position chunk at a time.

        ``sum_outer`` (P, d, d) holds Σxxᵀ of the centred features; each chunk's W is written over its
        sums, so the statistics and the result never take memory side by side. Returns ``sum_outer``.
        """
        dims = mean.shape[1]
        identity = torch.eye(dims, dtype=torch.float64, device=sum_outer.device)
        denominator = max(count - 1, 1)
        for start in range(0, sum_outer.shape[0], _WHITENING_CHUNK):
            stop = start + _WHITENING_CHUNK
            centred_mean = mean[start:stop]
            cov = sum_outer[start:stop].double()
            cov.sub_(count * centred_mean[:, :, None] * centred_mean[:, None, :]).div_(denominator)
            cov.add_(self.epsilon * identity)
            factor, info = torch.linalg.cholesky_ex(cov)
            failed = int((info > 0).sum())
            if failed or not bool(torch.isfinite(cov).all()):
                raise InvalidInputError(
                    f"padim: the feature covariance is not positive definite at {failed or 'some'} of positions "
                    f"{start}..{min(stop, sum_outer.shape[0]) - 1} even with the ridge epsilon={self.epsilon:g} "
                    f"(from {count} training images); raise epsilon (e.g. -p epsilon={max(self.epsilon * 100, 0.01):g}), "
                    "lower num_features, or train on more images")
            sum_outer[start:stop] = torch.linalg.solve_triangular(factor, identity.expand_as(factor), upper=False)
        return sum_outer
