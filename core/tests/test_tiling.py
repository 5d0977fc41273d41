"""Tiling: the grid, the blend, streamed fitting on tiles and bounded, full-resolution prediction."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from adcore.base import BaseDetector
from adcore.errors import InvalidInputError
from adcore.tiling import TileStream, blend_tiles, tile_grid
from adcore.inputs import ImageStream


class PixelDetector(BaseDetector):
    """Map = distance of each pixel from the mean training pixel: local, so tiling must not change it."""

    def __init__(self, *, input_size: int = 32, batch_size: int = 4, seed: int = 0) -> None:
        self.input_size = input_size
        self.batch_size = batch_size
        self.seed = seed

    def _fit(self, stream) -> None:
        total, count, self.batch_shapes_ = 0.0, 0, []
        for batch in stream:
            self.batch_shapes_.append(list(batch.shape))
            total = total + batch.mean((0, 2, 3)) * batch.shape[0]
            count += batch.shape[0]
        self.mean_ = total / count
        self.tiles_seen_ = count

    def _predict(self, images):
        self.predicted_batches = getattr(self, "predicted_batches", []) + [images.shape[0]]
        maps = (images - self.mean_.view(1, 3, 1, 1)).abs().mean(1)
        return maps.flatten(1).amax(1), maps


def test_grid_covers_the_image_edge_to_edge_with_the_overlap():
    grid = tile_grid(100, 70, 32, 0.25)
    assert grid.tops[0] == 0 and grid.tops[-1] == 100 - 32 and grid.lefts[-1] == 70 - 32
    assert all(b - a <= 24 for a, b in zip(grid.tops, grid.tops[1:]))  # stride at most 32 * (1 - 0.25)
    covered = torch.zeros(100, 70)
    for top, left in grid.boxes():
        covered[top:top + 32, left:left + 32] += 1
    assert bool((covered >= 1).all())
    small = tile_grid(20, 50, 32, 0.5)
    assert (small.tile_h, small.tops) == (20, (0,))
    with pytest.raises(InvalidInputError):
        tile_grid(10, 10, 4, 1.0)


def test_blend_of_crops_of_one_map_gives_that_map_back():
    full = torch.rand(90, 130)
    grid = tile_grid(90, 130, 40, 0.3)
    blended = blend_tiles(grid, ((t, l, full[t:t + 40, l:l + 40]) for t, l in grid.boxes()), 0.3)
    torch.testing.assert_close(blended, full)


def test_tile_stream_streams_batches_of_tiles_over_mixed_sizes():
    images = [torch.rand(3, 64, 64), torch.rand(3, 40, 100)]
    stream = TileStream(ImageStream(images, None, batch_size=1), 32, 0.0, (32, 32), None, batch_size=3)
    batches = list(stream)
    assert all(b.shape[0] <= 3 and tuple(b.shape[1:]) == (3, 32, 32) for b in batches)
    assert sum(b.shape[0] for b in batches) == 4 + 2 * 4 == len(tile_grid(64, 64, 32, 0.0)) + len(tile_grid(40, 100, 32, 0.0))
    assert sum(b.shape[0] for b in stream) == sum(b.shape[0] for b in batches)  # re-iterable


def test_tiled_prediction_is_at_full_resolution_and_matches_the_local_map():
    train = torch.rand(2, 3, 96, 96) * 0.2 + 0.4
    detector = PixelDetector(tile_size=32, tile_overlap=0.25).fit(train)
    assert detector.tiles_seen_ == 2 * len(tile_grid(96, 96, 32, 0.25))
    assert max(shape[0] for shape in detector.batch_shapes_) <= 4
    image = torch.rand(1, 3, 150, 110)
    prediction = detector.predict(image)
    assert tuple(prediction.anomaly_map.shape) == (1, 150, 110)
    # tiles of input_size need no resize, so each tile's map is the local map: the blend is exact
    expected = (image - detector.mean_.view(1, 3, 1, 1)).abs().mean(1)
    torch.testing.assert_close(prediction.anomaly_map, expected)
    torch.testing.assert_close(prediction.pred_score, expected.flatten(1).amax(1))


def test_large_image_is_scored_a_bounded_number_of_tiles_at_a_time():
    detector = PixelDetector(tile_size=64, tile_overlap=0.0).fit(torch.rand(1, 3, 64, 64))
    detector.predict_batch_size = 5
    detector.predicted_batches = []
    prediction = detector.predict(torch.rand(1, 3, 640, 512))
    assert max(detector.predicted_batches) <= 5 and sum(detector.predicted_batches) == 10 * 8
    assert tuple(prediction.anomaly_map.shape) == (1, 640, 512)


def test_tiling_after_a_resize_and_round_trip(tmp_path):
    detector = PixelDetector(tile_size=32, tile_input_size=64).fit(torch.rand(2, 3, 200, 200))
    assert detector.tiles_seen_ == 2 * len(tile_grid(64, 64, 32, 0.25))
    prediction = detector.predict(torch.rand(2, 3, 120, 90))
    assert tuple(prediction.anomaly_map.shape) == (2, 120, 90)
    assert detector.get_params()["tile_input_size"] == 64
    with pytest.raises(InvalidInputError, match="tile_overlap"):
        PixelDetector(tile_size=32, tile_overlap=0.95)
    with pytest.raises(InvalidInputError, match="tile_size"):
        PixelDetector(tile_size=8)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor storage any operation newly allocates (views and in-place results excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("given_as", ["float32", "float32 channels-last (as load_image gives it)", "uint8"])
def test_tiled_prediction_holds_no_full_size_buffer_but_the_map(given_as):
    # an 8,000² image is 732 MB as float32: a float copy of the input (a clamp, a uint8 conversion)
    # or a second copy of the map (stacking the per-image maps) must never be made
    detector = PixelDetector(tile_size=32, tile_overlap=0.25).fit(torch.rand(1, 3, 32, 32))
    detector.predict_batch_size = 4  # a batch of tiles (4 × 3 × 32² floats) is smaller than the map
    image = torch.randint(0, 256, (1, 3, 200, 176), dtype=torch.uint8)
    given = image if given_as == "uint8" else image.float() / 255.0
    if "channels-last" in given_as:
        given = given.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    with _LargestAllocation() as watch:
        prediction = detector.predict(given)
    assert watch.largest == 200 * 176 * 4  # the (1, H, W) float32 map, allocated once
    reference = detector.predict(image.float() / 255.0)  # uint8 is converted tile by tile to the same values
    assert torch.equal(prediction.anomaly_map, reference.anomaly_map)
    assert torch.equal(prediction.pred_score, reference.pred_score)


def test_tiled_batch_writes_each_map_in_place_with_the_same_result():
    detector = PixelDetector(tile_size=32, tile_overlap=0.25).fit(torch.rand(1, 3, 32, 32))
    images = torch.randint(0, 256, (3, 3, 70, 90), dtype=torch.uint8)
    batch = detector.predict(images)
    for index in range(3):
        single = detector.predict(images[index:index + 1].float() / 255.0)
        assert torch.equal(batch.anomaly_map[index], single.anomaly_map[0])
        assert torch.equal(batch.pred_score[index], single.pred_score[0])
    resized = PixelDetector(tile_size=32, tile_input_size=64).fit(torch.rand(1, 3, 64, 64))
    from_uint8 = resized.predict(images)  # resized whole first, then tiled: converted once, same values
    assert torch.equal(from_uint8.anomaly_map, resized.predict(images.float() / 255.0).anomaly_map)
