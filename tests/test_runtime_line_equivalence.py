"""adcore-runtime draws ``adcore predict``'s per-image outputs as adcore's line does (issue 20: the
torch-free Ray actors for exported artefacts return what the local predict writes).

For the same anomaly map: the same regions and mask (``adcore.line.regions.find_regions`` against
``adcore_runtime.line.regions_and_mask``), the same normalised map, the same turbo colours and the
same heatmap picture, pixel for pixel (``adcore.line.heatmaps.render_heatmap`` against
``adcore_runtime.line.render_heatmap``), calibrated or not, side by side or not, with the thicker
contours of large images.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("adcore_runtime") is None:  # a checkout without `pip install -e runtime`
    sys.path.insert(0, str(REPO / "runtime" / "src"))

from adcore_runtime import line as runtime_line  # noqa: E402
from adcore_runtime.turbo import TURBO, turbo  # noqa: E402

from adcore.line import heatmaps as line_heatmaps  # noqa: E402
from adcore.line.regions import find_regions  # noqa: E402
from adcore.line.sink import Calibration, normalized_map  # noqa: E402


def _blobby_map(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth float32 map with a few bright blobs of different sizes (some one pixel), ties included."""
    rng = np.random.default_rng(seed)
    amap = rng.normal(0.0, 0.3, shape).astype(np.float32)
    for _ in range(6):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = int(rng.integers(0, 6))
        amap[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] += np.float32(rng.uniform(2.0, 4.0))
    amap[0, 0] = amap[-1, -1] = np.float32(3.5)  # two one-pixel regions with the same peak
    return amap


def test_the_turbo_table_and_lookup_are_matplotlibs():
    from matplotlib import colormaps

    reference = colormaps["turbo"]
    assert np.array_equal(reference(np.arange(256))[:, :3], TURBO)
    values = np.random.default_rng(0).random(5000).astype(np.float32)
    values[:4] = [0.0, 1.0, 0.5, np.nan]
    assert np.array_equal(turbo(values), reference(np.clip(values, 0, 1))[..., :3], equal_nan=True)
    ramp = np.linspace(1.0, 0.0, 613)  # float64, as the colour bar's
    assert np.array_equal(turbo(ramp), reference(ramp)[..., :3])


@pytest.mark.parametrize("min_area", [1, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regions_and_mask_are_the_lines(seed: int, min_area: int):
    amap = _blobby_map((61, 47), seed)
    expected, expected_mask = find_regions(amap, 1.5, min_area=min_area)
    regions, mask = runtime_line.regions_and_mask(amap, 1.5, min_area)
    assert regions == [region.to_json() for region in expected]
    assert np.array_equal(mask, expected_mask)
    assert len(expected) >= 2 and (min_area == 1 or mask.sum() < (amap >= 1.5).sum())  # real regions, some dropped
    assert runtime_line.regions_and_mask(amap, None, min_area) == (None, None)


@pytest.mark.parametrize("calibrated", [True, False])
def test_the_normalised_map_is_the_lines(calibrated: bool):
    amap = _blobby_map((30, 40), 3)
    calibration = Calibration(1.0, 0.5, 1.5, 0.4 if calibrated else None)
    expected = normalized_map(amap, calibration)
    got = runtime_line.normalized_map(amap, calibration.pixel_threshold, calibration.pixel_scale)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


@pytest.mark.parametrize("shape,side_by_side,calibrated", [((40, 40), False, True), ((33, 57), True, False),
                                                         ((7, 9), False, True), ((610, 30), True, True)],
                         ids=["square", "side-by-side-uncalibrated", "tiny-caption-wider", "large-thick-contours"])
def test_the_heatmap_picture_is_the_lines(shape: tuple[int, int], side_by_side: bool, calibrated: bool):
    rng = np.random.default_rng(sum(shape))
    image = rng.random((*shape, 3)).astype(np.float32)
    amap = _blobby_map(shape, 5)
    pixel_scale = 0.4 if calibrated else None
    normalized = runtime_line.normalized_map(amap, 1.5, pixel_scale)
    _, mask = find_regions(amap, 1.5)
    title = "cam1/img001.png  score 3.142  norm 0.731  ANOMALOUS"
    expected = line_heatmaps.render_heatmap(image, normalized, mask, title=title, calibrated=calibrated,
                                            style=line_heatmaps.HeatmapStyle(side_by_side=side_by_side))
    got = runtime_line.render_heatmap(image, normalized, mask, title=title, calibrated=calibrated,
                                      side_by_side=side_by_side)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert runtime_line.png_bytes(got) == line_heatmaps.png_bytes(expected)
    assert (got == 255).all(axis=-1).any()  # contours drawn
