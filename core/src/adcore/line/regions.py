"""Defect regions: the binary mask at the pixel threshold and its connected components.

A pixel is defective when its raw map value is ``>= pixel_threshold`` (its normalised value
``>= 0.5``). Components are 8-connected (diagonal neighbours join), found by
:func:`scipy.ndimage.label`. Each region reports its bounding box ``[x0, y0, x1, y1]`` in the
image's own pixels with ``x1``/``y1`` exclusive (``x1 - x0`` is the width, as in a Python slice),
its ``area`` (pixels inside the component, not the box) and its ``peak`` (the largest raw map value
inside it, in the units of ``pixel_threshold``). Components smaller than ``min_area`` pixels are
dropped, from the list and from the mask. Regions are ordered by peak, highest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Region", "find_regions"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """One connected defect region (see the module docstring for the conventions)."""

    box: tuple[int, int, int, int]
    area: int
    peak: float

    def to_json(self) -> dict:
        return {"box": list(self.box), "area": self.area, "peak": self.peak}


def find_regions(anomaly_map: np.ndarray, threshold: float, *, min_area: int = 1) -> tuple[list[Region], np.ndarray]:
    """The regions of a ``(H,W)`` map at ``threshold`` and the boolean mask of the regions kept."""
    from scipy import ndimage

    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        from adcore.errors import InvalidInputError

        raise InvalidInputError(f"find_regions: expected a (H,W) map, got shape {amap.shape}")
    mask = amap >= threshold
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return [], mask
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index).astype(np.int64)
    peaks = ndimage.maximum(amap, labels, index)
    regions = []
    small = []
    for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        area = int(areas[label - 1])
        if area < min_area:
            small.append(label)
            continue
        regions.append(Region((int(cols.start), int(rows.start), int(cols.stop), int(rows.stop)), area,
                              float(peaks[label - 1])))
    if small:
        mask = mask & ~np.isin(labels, small)
    regions.sort(key=lambda region: -region.peak)
    return regions, mask
