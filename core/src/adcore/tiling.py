"""Tiling for high-resolution inspection: any detector scores an image of any size tile by tile.

A 2,000-px board resized to a 256-px ``input_size`` loses a defect of a few pixels before the
backbone sees it. With ``tile_size`` set (a parameter every :class:`~adcore.base.BaseDetector`
has), the base class cuts each image into overlapping ``tile_size`` tiles at its native resolution
(or, with ``tile_input_size``, after resizing the whole image to that size first), fits on the
tiles of the good images — streamed, a source batch at a time, never all tiles in memory — and
predicts tile by tile: each tile goes through the detector's usual path (resized to
``input_size``, scored, its map resized back to the tile), and the tiles' maps are blended into one
map at the input's full resolution.

Blending: each tile's map is weighted by a separable window that is 1 inside the tile and ramps
down linearly across the overlap, so seams between tiles vanish; a pixel's value is the weighted
mean of the tiles covering it. Because the tiles form a grid and the window is separable, the sum
of weights is an outer product of two vectors: only one full-size buffer (the map itself) is ever
held. The image score is the maximum of the tiles' scores unless a detector aggregates them its
own way (:meth:`BaseDetector.aggregate_tile_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adcore.errors import InvalidInputError
from adcore.inputs import ImageStream, as_float_images, resize_images, to_size

__all__ = ["TileGrid", "tile_grid", "tile_window", "TileStream", "blend_tiles", "as_float_images", "score_tiles",
           "predict_tiled_batch", "TilingMixin"]


@dataclass(frozen=True)
class TileGrid:
    """Tile origins along each axis of an ``height`` × ``width`` image; every tile is ``tile_h`` × ``tile_w``."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    def boxes(self) -> Iterator[tuple[int, int]]:
        """``(top, left)`` of every tile, row by row."""
        for top in self.tops:
            for left in self.lefts:
                yield top, left


def _origins(length: int, tile: int, overlap: float) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    stride = max(1, int(round(tile * (1.0 - overlap))))
    count = math.ceil((length - tile) / stride) + 1
    # spread the tiles evenly from edge to edge: the last one ends exactly at the border
    return tuple(int(round(i * (length - tile) / (count - 1))) for i in range(count))


def tile_grid(height: int, width: int, tile_size: int | tuple[int, int], overlap: float) -> TileGrid:
    """The tiles covering an image, overlapping by at least ``overlap`` of a tile (0 ≤ overlap < 1).

    An image side shorter than the tile gets one tile of the image's own length on that axis.
    """
    if not 0.0 <= overlap < 1.0:
        raise InvalidInputError(f"tile_overlap must be in [0, 1), got {overlap!r}")
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    return TileGrid(height, width, tile_h, tile_w, _origins(height, tile_h, overlap), _origins(width, tile_w, overlap))


def tile_window(length: int, ramp: int) -> torch.Tensor:
    """1 in the middle, falling linearly to ``1/(ramp+1)`` over ``ramp`` pixels at each end (never 0)."""
    position = torch.arange(length, dtype=torch.float32)
    rising = (position + 1) / (ramp + 1)
    falling = (length - position) / (ramp + 1)
    return torch.minimum(torch.minimum(rising, falling), torch.ones(()))


def _axis_weights(origins: tuple[int, ...], tile: int, total: int, window: torch.Tensor) -> torch.Tensor:
    weights = torch.zeros(total)
    for origin in origins:
        weights[origin:origin + tile] += window
    return weights


def blend_tiles(grid: TileGrid, tile_maps: Iterable[tuple[int, int, torch.Tensor]], overlap: float,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Blend ``(top, left, map (tile_h, tile_w))`` into one ``(height, width)`` map (see the module
    docstring), written into ``out`` (a float32 ``(height, width)`` buffer, overwritten) when given."""
    ramp_h = max(0, int(round(grid.tile_h * overlap))) if len(grid.tops) > 1 else 0
    ramp_w = max(0, int(round(grid.tile_w * overlap))) if len(grid.lefts) > 1 else 0
    window_h, window_w = tile_window(grid.tile_h, ramp_h), tile_window(grid.tile_w, ramp_w)
    window = window_h[:, None] * window_w[None, :]
    blended = torch.zeros(grid.height, grid.width) if out is None else out.zero_()
    for top, left, amap in tile_maps:
        blended[top:top + grid.tile_h, left:left + grid.tile_w].addcmul_(amap.float(), window)
    norm_h = _axis_weights(grid.tops, grid.tile_h, grid.height, window_h)
    norm_w = _axis_weights(grid.lefts, grid.tile_w, grid.width, window_w)
    blended.div_(norm_h[:, None]).div_(norm_w[None, :])
    return blended


def score_tiles(image: torch.Tensor, tile_size: int | tuple[int, int], overlap: float,
                resize_to: tuple[int, int] | None, batch_size: int,
                predict_resized: Callable[[torch.Tensor, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]],
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Score one ``(3,H,W)`` image tile by tile, ``batch_size`` tiles per ``predict_resized(tiles, tile
    size)`` call (after resizing the image to ``resize_to``, if given): every tile's score, in grid
    order, and the blended map at ``H×W`` (written into ``out``, a float32 ``(H,W)`` buffer, when
    given). Shared by every tiling predictor (detectors, artefacts).

    A ``uint8`` image stays ``uint8``: each batch of tiles is converted to float when it is cut, so
    the only full-size buffer is the map (a float copy of an 8,000² image would be 732 MB).
    """
    height, width = image.shape[-2:]
    source = resize_images(as_float_images(image)[None], resize_to)[0] if resize_to is not None else image
    grid = tile_grid(source.shape[-2], source.shape[-1], tile_size, overlap)
    boxes = list(grid.boxes())
    tile_scores: list[torch.Tensor] = []

    def tile_maps():
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start:start + batch_size]
            tiles = as_float_images(torch.stack([source[:, t:t + grid.tile_h, l:l + grid.tile_w] for t, l in chunk]))
            scores, maps = predict_resized(tiles, (grid.tile_h, grid.tile_w))
            tile_scores.append(scores)
            yield from ((t, l, amap) for (t, l), amap in zip(chunk, maps))

    at_size = (grid.height, grid.width) == (height, width)
    blended = blend_tiles(grid, tile_maps(), overlap, out if at_size else None)
    if not at_size:
        resized = F.interpolate(blended[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        blended = resized if out is None else out.copy_(resized)
    return torch.cat(tile_scores), blended


def predict_tiled_batch(images: torch.Tensor, predict_one: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(B,)`` and maps ``(B,H,W)`` of a batch scored image by image: ``predict_one(image,
    out)`` returns one image's score and writes its map into ``out``, a row of the batch's map
    buffer, so no image's map is held twice (as stacking per-image maps would)."""
    maps = torch.empty(images.shape[0], *images.shape[-2:])
    scores = torch.stack([predict_one(image, out) for image, out in zip(images, maps)])
    return scores, maps


class TileStream:
    """The fit stream of a tiling detector: batches of tiles, resized to ``input_size``, streamed.

    Wraps an :class:`~adcore.inputs.ImageStream` of full-size images (mixed sizes allowed) and
    yields up to ``batch_size`` tiles at a time; re-iterable like the stream it wraps.
    """

    def __init__(self, images: ImageStream, tile_size: int | tuple[int, int], overlap: float,
                 input_size: tuple[int, int], tile_input_size: tuple[int, int] | None, batch_size: int) -> None:
        self.images = images
        self.tile_size = tile_size
        self.overlap = overlap
        self.size = input_size
        self.tile_input_size = tile_input_size
        self.batch_size = batch_size
        self.where = images.where

    def __iter__(self) -> Iterator[torch.Tensor]:
        for tiles, _ in self.with_labels():
            yield tiles

    def with_labels(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Tile batches with each tile labelled like the image it came from (when images carry labels)."""
        pending: list[torch.Tensor] = []
        pending_labels: list[torch.Tensor] = []
        has_labels = False
        for batch, labels in self.images.with_labels():
            if self.tile_input_size is not None:
                batch = resize_images(batch, self.tile_input_size)
            grid = tile_grid(batch.shape[-2], batch.shape[-1], self.tile_size, self.overlap)
            for top, left in grid.boxes():
                tiles = resize_images(batch[:, :, top:top + grid.tile_h, left:left + grid.tile_w], self.size)
                pending.append(tiles)
                if labels is not None:
                    has_labels = True
                    pending_labels.append(labels)
                while sum(t.shape[0] for t in pending) >= self.batch_size:
                    yield self._take(pending, pending_labels if has_labels else None)
        while pending:
            yield self._take(pending, pending_labels if has_labels else None)

    def _take(self, pending: list[torch.Tensor], labels: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        tiles = torch.cat(pending)
        out, rest = tiles[: self.batch_size], tiles[self.batch_size:]
        pending.clear()
        if rest.shape[0]:
            pending.append(rest)
        label_out = None
        if labels is not None:
            all_labels = torch.cat(labels)
            label_out, label_rest = all_labels[: self.batch_size], all_labels[self.batch_size:]
            labels.clear()
            if label_rest.shape[0]:
                labels.append(label_rest)
        return out.contiguous(), label_out

    def materialize(self) -> torch.Tensor:
        """All tiles as one ``(N,3,h,w)`` tensor (for detectors that train for several epochs)."""
        return torch.cat(list(self), dim=0)

    def num_images(self) -> int:
        """Tiles, which are the images the detector learns from."""
        return sum(batch.shape[0] for batch in self)


class TilingMixin:
    """The tiling half of :class:`~adcore.base.BaseDetector`: whether it tiles, the load size, and
    prediction tile by tile (each tile through ``_predict_resized``, the maps blended)."""

    tile_size: int | tuple[int, int] | None
    tile_overlap: float
    predict_batch_size: int
    device_: torch.device

    @property
    def tiled(self) -> bool:
        """Whether this detector scores images tile by tile (``tile_size`` is set)."""
        return getattr(self, "tile_size", None) is not None

    @property
    def load_size(self) -> tuple[int, int] | None:
        """The size datasets should load images at for this detector: ``input_size``, or ``None``
        (each image's own size) when it tiles, since tiles are cut from the full-resolution image."""
        return None if self.tiled else self.image_size

    def _tile_input_size(self) -> tuple[int, int] | None:
        value = getattr(self, "tile_input_size", None)
        return None if value is None else to_size(value)

    def aggregate_tile_scores(self, tile_scores: torch.Tensor) -> torch.Tensor:
        """The image score from its tiles' scores: the maximum (a detector may aggregate its own way)."""
        return tile_scores.max()

    def _predict_tiled(self, image: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``(3,H,W)`` image (float, or uint8 converted tile by tile) scored tile by tile; at most
        ``predict_batch_size`` tiles at a time; the map written into ``out`` when given."""
        image = image.to(self.device_)  # tiles are cut where they are scored
        tile_scores, blended = score_tiles(image, self.tile_size, self.tile_overlap, self._tile_input_size(),
                                           self.predict_batch_size, self._predict_resized, out)
        return self.aggregate_tile_scores(tile_scores).float().reshape(()), blended
