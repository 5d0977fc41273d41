"""find_regions against a plain flood fill (8-connectivity)."""

from __future__ import annotations

import numpy as np
import pytest

from adcore_runtime import find_regions


def _flood_fill_regions(mask: np.ndarray, amap: np.ndarray) -> list[tuple]:
    seen = np.zeros_like(mask)
    found = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, pixels = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            pixels.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        ys, xs = np.array(pixels).T
        found.append(((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), len(pixels),
                      float(amap[ys, xs].max())))
    return sorted(found)


@pytest.mark.parametrize("seed", range(40))
def test_regions_match_a_flood_fill(seed: int):
    rng = np.random.default_rng(seed)
    amap = rng.random((int(rng.integers(1, 25)), int(rng.integers(1, 25)))).astype(np.float32)
    threshold = float(rng.uniform(0.3, 0.95))
    got = sorted((r.box, r.area, r.peak) for r in find_regions(amap, threshold))
    assert got == _flood_fill_regions(amap >= threshold, amap)


def test_diagonal_pixels_join_and_order_is_by_peak():
    amap = np.zeros((6, 8), dtype=np.float32)
    amap[0, 0] = amap[1, 1] = 0.6  # diagonal neighbours: one region
    amap[4:6, 5:8] = 0.9
    regions = find_regions(amap, 0.5)
    assert [r.as_dict() for r in regions] == [{"box": [5, 4, 8, 6], "area": 6, "peak": pytest.approx(0.9)},
                                              {"box": [0, 0, 2, 2], "area": 2, "peak": pytest.approx(0.6)}]
    assert find_regions(amap, 1.0) == []
