"""Scores people can read: the normalised score and the rules ``calibrate`` uses to set it up.

A raw anomaly score's scale differs per detector (a PaDiM threshold may be 507.2, a PatchCore one
2.3). The normalised score maps every detector onto (0, 1) with the calibrated threshold at exactly
0.5::

    normalize_score(raw, threshold, scale) = 1 / (1 + exp(-(raw - threshold) / scale))

It is monotone in ``raw``, so it ranks images exactly as the raw score does, and ``>= 0.5`` flags
exactly what ``raw >= threshold`` flags. The same function (Contract A) is used by
``BaseDetector.predict``, ``adcore predict`` and exported artefacts.

``scale`` is the *spread* of the good calibration scores (:func:`spread`): the normal-consistent
interquartile range ``(q75 - q25) / 1.349`` of the good images' scores (the standard deviation for
normally distributed scores, robust to a few outliers); when that is zero (all scores in the middle
half equal) the standard deviation; when that is zero too, ``max(|threshold|, 1) * 1e-3``, so the
scale is always a positive, finite float. The same rule applied to good pixels gives
``pixel_scale_``.

The per-pixel threshold is set like the image threshold, on a bounded sample of the good
calibration pixels (:class:`PixelSample`): every good image contributes at most
``PixelSample.per_image`` pixels drawn uniformly (all of them when the image is smaller), and the
sample keeps at most ``PixelSample.capacity`` values, a uniform random subset of everything offered
(a bottom-k sketch on random keys). Memory is therefore bounded (at most about twice ``capacity``
floats, 16 MiB, while sampling) whatever the size of the calibration set; a small calibration set (up to ``capacity`` pixels in all, images up to
``per_image`` pixels) is used exactly.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import torch

__all__ = ["normalize_score", "spread", "fpr_threshold", "PixelSample"]


@overload
def normalize_score(raw: float, threshold: float, scale: float) -> float: ...
@overload
def normalize_score(raw: torch.Tensor, threshold: float, scale: float) -> torch.Tensor: ...
@overload
def normalize_score(raw: np.ndarray, threshold: float, scale: float) -> np.ndarray: ...


def normalize_score(raw, threshold, scale):
    """``1 / (1 + exp(-(raw - threshold) / scale))``: a float, a tensor (float32 out) or an array."""
    if isinstance(raw, torch.Tensor):
        return torch.sigmoid((raw.double() - threshold) / scale).float()
    if isinstance(raw, np.ndarray):
        z = (raw.astype(np.float64) - threshold) / scale
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # tanh form: no overflow warning
    z = (float(raw) - threshold) / scale
    return 0.5 * (1.0 + math.tanh(0.5 * z))


def spread(values: torch.Tensor, threshold: float) -> float:
    """The scale rule of the module docstring for a 1-D tensor of good scores (or pixels)."""
    values = values.detach().double().reshape(-1)
    if values.numel() >= 2:
        q25, q75 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
        robust = (q75 - q25) / 1.349
        if robust > 0 and math.isfinite(robust):
            return float(robust)
        std = float(values.std(correction=0))
        if std > 0 and math.isfinite(std):
            return std
    return max(abs(float(threshold)), 1.0) * 1e-3


def fpr_threshold(good: torch.Tensor, target_fpr: float) -> tuple[float, float]:
    """The smallest threshold that flags at most ``target_fpr`` of ``good`` (scores or pixels), and
    the fraction it does flag. The threshold is the next float32 above a good value, so that value
    itself is not flagged (scores are float32: a float64 step would round away)."""
    ordered = torch.sort(good.detach().float().reshape(-1), descending=True).values
    allowed = int(math.floor(target_fpr * ordered.numel()))
    pivot = float(ordered[min(allowed, ordered.numel() - 1)])
    threshold = float(np.nextafter(np.float32(pivot), np.float32(np.inf)))
    return threshold, float((ordered >= threshold).float().mean())


class PixelSample:
    """A bounded uniform sample of good pixel scores (see the module docstring)."""

    per_image: int = 65_536
    capacity: int = 2_097_152

    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator().manual_seed(seed)
        self._values: list[torch.Tensor] = []
        self._keys: list[torch.Tensor] = []
        self._held = 0
        self.offered = 0  # pixels seen in all (before any subsampling)

    def add(self, maps: torch.Tensor) -> None:
        """Offer the pixels of ``(B,H,W)`` maps, one image per leading index."""
        maps = maps.detach().float().cpu()
        for amap in maps.reshape(maps.shape[0], -1):
            self.offered += amap.numel()
            if amap.numel() > self.per_image:
                amap = amap[torch.randperm(amap.numel(), generator=self._generator)[:self.per_image]]
            self._values.append(amap.clone())
            self._keys.append(torch.rand(amap.numel(), generator=self._generator))
            self._held += amap.numel()
            if self._held > 2 * self.capacity:  # compact rarely: amortised linear time
                self._compact()

    def _compact(self) -> None:
        values, keys = torch.cat(self._values), torch.cat(self._keys)
        if values.numel() > self.capacity:
            kept = torch.topk(keys, self.capacity, largest=False).indices
            values, keys = values[kept], keys[kept]
        self._values, self._keys, self._held = [values], [keys], int(values.numel())

    @property
    def values(self) -> torch.Tensor:
        """The sampled pixel values (at most ``capacity``)."""
        if not self._values:
            return torch.empty(0)
        self._compact()
        return self._values[0]

    def __len__(self) -> int:
        return int(self.values.numel())
