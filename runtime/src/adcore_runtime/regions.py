"""Connected regions of an anomaly map above the pixel threshold, in numpy (no scipy here).

Runs of above-threshold pixels are found row by row (vectorised), runs that touch in neighbouring
rows (8-connectivity: diagonal neighbours join) are merged with a union-find over runs, so the cost
follows the number of runs, not of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adcore_runtime.errors import InvalidInputError

__all__ = ["Region", "find_regions", "find_regions_and_mask"]


@dataclass(frozen=True)
class Region:
    """One region: its box ``[x0, y0, x1, y1]`` (pixel edges, x1 and y1 exclusive), area in pixels
    and peak map value."""

    box: tuple[int, int, int, int]
    area: int
    peak: float

    def as_dict(self) -> dict:
        return {"box": list(self.box), "area": self.area, "peak": self.peak}


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, stop) of every horizontal run of True, in row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    start_rows, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)
    return start_rows, starts, stops


def _components(amap: np.ndarray, threshold: float) -> tuple[list[Region], list[np.ndarray], tuple]:
    """The 8-connected regions of ``amap >= threshold`` in the order they are met (raster order of
    their first pixel, as scipy's labels), each region's run indices, and the runs."""
    rows, starts, stops = _runs(amap >= threshold)
    count = len(rows)
    if count == 0:
        return [], [], (rows, starts, stops)
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows, np.arange(amap.shape[0] + 1))
    for y in range(1, amap.shape[0]):
        above = range(row_first[y - 1], row_first[y])
        here = range(row_first[y], row_first[y + 1])
        if not above or not here:
            continue
        j = above.start
        for i in here:  # both row's runs are sorted: a merge walk
            while j < above.stop and stops[j] < starts[i]:  # run j ends before run i's diagonal neighbour
                j += 1
            k = j
            while k < above.stop and starts[k] <= stops[i]:
                a, b = root(i), root(k)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
    labels = np.array([root(i) for i in range(count)])
    regions, members_of = [], []
    for label in np.unique(labels):  # a root is its component's first run: raster order
        members = np.nonzero(labels == label)[0]
        y0, y1 = int(rows[members].min()), int(rows[members].max()) + 1
        x0, x1 = int(starts[members].min()), int(stops[members].max())
        area = int((stops[members] - starts[members]).sum())
        peak = max(float(amap[rows[m], starts[m]:stops[m]].max()) for m in members)
        regions.append(Region((x0, y0, x1, y1), area, peak))
        members_of.append(members)
    return regions, members_of, (rows, starts, stops)


def _as_map(anomaly_map: np.ndarray) -> np.ndarray:
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        raise InvalidInputError(f"an anomaly map must be (H, W), got shape {amap.shape}")
    return amap


def find_regions(anomaly_map: np.ndarray, threshold: float) -> list[Region]:
    """Regions of ``anomaly_map >= threshold`` (8-connected), largest peak first."""
    regions, _, _ = _components(_as_map(anomaly_map), threshold)
    return sorted(regions, key=lambda r: (-r.peak, r.box))


def find_regions_and_mask(anomaly_map: np.ndarray, threshold: float, *,
                          min_area: int = 1) -> tuple[list[Region], np.ndarray]:
    """adcore's rule (``adcore.line.regions.find_regions``): the regions of at least ``min_area``
    pixels, in the order they are met, and the boolean mask of those regions only."""
    amap = _as_map(anomaly_map)
    regions, members_of, (rows, starts, stops) = _components(amap, threshold)
    mask = amap >= threshold
    kept = []
    for region, members in zip(regions, members_of):
        if region.area >= min_area:
            kept.append(region)
            continue
        for m in members:  # a dropped region leaves the mask too
            mask[rows[m], starts[m]:stops[m]] = False
    return kept, mask
