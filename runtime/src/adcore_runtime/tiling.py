"""Tiling, as adcore's ``adcore.tiling`` does it, in numpy: for artefacts of tiling detectors.

A tiling detector's graph scores one tile at ``input_size``; the caller cuts the image (optionally
resized to ``tile_input_size`` first) into overlapping ``tile_size`` tiles, scores each through the
usual resize rule, and blends the tiles' maps with a separable window that is 1 inside a tile and
ramps down linearly across the overlap. The image score is the maximum tile score (adcore's default
``aggregate_tile_scores``). The main test suite checks these against adcore's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from adcore_runtime.errors import InvalidInputError

__all__ = ["TileGrid", "tile_grid", "tile_window", "blend_tiles", "to_size"]


def to_size(value: int | list | tuple) -> tuple[int, int]:
    """``n`` or ``[h, w]`` as ``(h, w)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise InvalidInputError(f"a size must be an integer or [height, width], got {value!r}")


@dataclass(frozen=True)
class TileGrid:
    """Tile origins along each axis of a ``height`` × ``width`` image; every tile is ``tile_h`` × ``tile_w``."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    def boxes(self) -> list[tuple[int, int]]:
        """``(top, left)`` of every tile, row by row."""
        return [(top, left) for top in self.tops for left in self.lefts]


def _origins(length: int, tile: int, overlap: float) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    stride = max(1, int(round(tile * (1.0 - overlap))))
    count = math.ceil((length - tile) / stride) + 1
    return tuple(int(round(i * (length - tile) / (count - 1))) for i in range(count))


def tile_grid(height: int, width: int, tile_size: int | tuple[int, int], overlap: float) -> TileGrid:
    """The tiles covering an image, overlapping by at least ``overlap`` of a tile."""
    if not 0.0 <= overlap < 1.0:
        raise InvalidInputError(f"tile_overlap must be in [0, 1), got {overlap!r}")
    tile_h, tile_w = to_size(tile_size)
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    return TileGrid(height, width, tile_h, tile_w, _origins(height, tile_h, overlap), _origins(width, tile_w, overlap))


def tile_window(length: int, ramp: int) -> np.ndarray:
    """1 in the middle, falling linearly to ``1/(ramp+1)`` over ``ramp`` pixels at each end."""
    position = np.arange(length, dtype=np.float32)
    rising = (position + 1) / np.float32(ramp + 1)
    falling = (length - position) / np.float32(ramp + 1)
    return np.minimum(np.minimum(rising, falling), np.float32(1.0))


def _axis_weights(origins: tuple[int, ...], tile: int, total: int, window: np.ndarray) -> np.ndarray:
    weights = np.zeros(total, dtype=np.float32)
    for origin in origins:
        weights[origin:origin + tile] += window
    return weights


def blend_tiles(grid: TileGrid, tile_maps: Iterable[tuple[int, int, np.ndarray]], overlap: float) -> np.ndarray:
    """Blend ``(top, left, map (tile_h, tile_w))`` into one ``(height, width)`` float32 map."""
    ramp_h = max(0, int(round(grid.tile_h * overlap))) if len(grid.tops) > 1 else 0
    ramp_w = max(0, int(round(grid.tile_w * overlap))) if len(grid.lefts) > 1 else 0
    window_h, window_w = tile_window(grid.tile_h, ramp_h), tile_window(grid.tile_w, ramp_w)
    window = window_h[:, None] * window_w[None, :]
    blended = np.zeros((grid.height, grid.width), dtype=np.float32)
    for top, left, amap in tile_maps:
        blended[top:top + grid.tile_h, left:left + grid.tile_w] += amap.astype(np.float32) * window
    blended /= _axis_weights(grid.tops, grid.tile_h, grid.height, window_h)[:, None]
    blended /= _axis_weights(grid.lefts, grid.tile_w, grid.width, window_w)[None, :]
    return blended
