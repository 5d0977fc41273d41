"""Heatmaps an inspection engineer can compare: the image's own resolution, one colour scale for
every image of every calibrated model, a colour bar, region contours; and the contact sheet.

The colour is the *normalised* pixel score (:func:`adcore.scoring.normalize_score` with the model's
``pixel_threshold_`` and ``pixel_scale_``): 0 to 1 on the ``turbo`` colour map, the pixel threshold
at exactly 0.5 (marked on the bar), so the same colour means the same thing across images and
models. A model without a pixel threshold cannot have that scale: its maps are scaled per image
(min to max) and the bar says so. Region contours (the boundary of the defect mask) are drawn in
white. Drawn with numpy and Pillow, not matplotlib: fast, thread-safe, exact pixel sizes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["HeatmapStyle", "colourise", "overlay", "render_heatmap", "render_contact_sheet", "png_bytes"]

_BAR_WIDTH = 16
_TEXT = (235, 235, 235)
_BACKGROUND = (24, 24, 24)
_CONTOUR = (255, 255, 255)


@dataclass(frozen=True)
class HeatmapStyle:
    """``side_by_side``: the input beside its overlay; ``alpha``: the weight of the colours."""

    side_by_side: bool = False
    alpha: float = 0.45


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def colourise(normalized: np.ndarray) -> np.ndarray:
    """``(H,W)`` values in [0, 1] as ``(H,W,3)`` float colours (turbo)."""
    from matplotlib import colormaps

    return colormaps["turbo"](np.clip(normalized, 0.0, 1.0))[..., :3]


def _contour(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    if not mask.any():
        return mask
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    if max(mask.shape) > 600:  # keep contours visible on large images
        edge = ndimage.binary_dilation(edge)
    return edge


def overlay(image: np.ndarray, normalized: np.ndarray, mask: np.ndarray | None, alpha: float) -> np.ndarray:
    """uint8 ``(H,W,3)``: the colours over a float ``(H,W,3)`` image in [0, 1], contours on top."""
    blended = (1 - alpha) * np.clip(image, 0, 1) + alpha * colourise(normalized)
    out = (blended * 255).round().astype(np.uint8)
    if mask is not None:
        out[_contour(mask)] = _CONTOUR
    return out


def _colour_bar(height: int, calibrated: bool) -> np.ndarray:
    """A ``(height, W, 3)`` uint8 legend: 1 at the top, 0 at the bottom, the threshold at 0.5."""
    from PIL import Image, ImageDraw

    label_width = 62 if calibrated else 50
    ramp = colourise(np.linspace(1.0, 0.0, height)[:, None].repeat(_BAR_WIDTH, axis=1))
    canvas = Image.new("RGB", (4 + _BAR_WIDTH + label_width, height), _BACKGROUND)
    canvas.paste(Image.fromarray((ramp * 255).round().astype(np.uint8)), (4, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(10)
    middle = (height - 1) // 2
    x_text = 4 + _BAR_WIDTH + 3
    if calibrated:
        draw.line([(2, middle), (4 + _BAR_WIDTH + 1, middle)], fill=_CONTOUR, width=1)
        labels = [(0, "1"), (middle - 5, "0.5 thr"), (height - 11, "0")]
    else:
        labels = [(0, "max"), (middle - 5, "per-"), (middle + 5, "image"), (height - 11, "min")]
    for y, text in labels:
        if 0 <= y <= height - 10 or height < 24:
            draw.text((x_text, max(0, y)), text, fill=_TEXT, font=font)
    return np.asarray(canvas)


def printable(text: str) -> str:
    """``text`` with newlines and other control characters escaped, for a one-line caption."""
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


def caption_width(text: str, size: int = 11) -> int:
    return int(_font(size).getlength(printable(text))) + 6


def _caption(width: int, text: str, height: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw

    text = printable(text)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    ImageDraw.Draw(canvas).text((3, 2), text, fill=_TEXT, font=_font(11))
    return np.asarray(canvas)


def render_heatmap(image: np.ndarray, normalized: np.ndarray, mask: np.ndarray | None, *, title: str,
                   calibrated: bool, style: HeatmapStyle = HeatmapStyle()) -> np.ndarray:
    """The heatmap picture, uint8 ``(H',W',3)``: caption on top, then ``[input |] overlay | bar``.

    ``image`` is float ``(H,W,3)`` in [0, 1] and ``normalized`` ``(H,W)`` in [0, 1], both at the
    image's own resolution; panels are not resized.
    """
    height = image.shape[0]
    panels = [overlay(image, normalized, mask, style.alpha)]
    if style.side_by_side:
        panels.insert(0, (np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    gap = np.full((height, 4, 3), _BACKGROUND, dtype=np.uint8)
    row = []
    for panel in panels:
        row += [panel, gap]
    row.append(_colour_bar(height, calibrated))
    body = np.concatenate(row, axis=1)
    missing = caption_width(title) - body.shape[1]
    if missing > 0:  # a small image: widen the canvas so the caption is readable, panels unscaled
        body = np.concatenate([body, np.full((height, missing, 3), _BACKGROUND, dtype=np.uint8)], axis=1)
    return np.concatenate([_caption(body.shape[1], title), body], axis=0)


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 ``(H,W,3)`` or ``(H,W)`` array as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)  # speed over a few bytes
    return buffer.getvalue()


def _thumbnail(picture: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    thumb = Image.fromarray(picture)
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    if max(thumb.size) < size:  # small images are enlarged too, pixels kept sharp
        factor = size / max(thumb.size)
        thumb = thumb.resize((max(1, round(thumb.width * factor)), max(1, round(thumb.height * factor))),
                             Image.Resampling.NEAREST)
    tile = Image.new("RGB", (size, size), _BACKGROUND)
    tile.paste(thumb, ((size - thumb.width) // 2, (size - thumb.height) // 2))
    return np.asarray(tile)


def _fit_tail(text: str, width: int) -> str:
    """``text``, or its end behind an ellipsis, so that it fits ``width`` pixels."""
    text = printable(text)
    while len(text) > 2 and caption_width(text) > width:
        text = "…" + text[2:]
    return text


def render_contact_sheet(tiles: Sequence[tuple[np.ndarray, str, str]], *, title: str, calibrated: bool,
                         tile_size: int = 224) -> np.ndarray:
    """One picture of overlays (uint8 ``(H,W,3)`` each) under two caption lines (a verdict, then the
    path, its end kept when it is long), most anomalous first."""
    columns = max(1, math.ceil(math.sqrt(len(tiles))))
    rows_count = max(1, math.ceil(len(tiles) / columns))
    cell_h = tile_size + 32
    grid = np.full((rows_count * cell_h, columns * (tile_size + 4), 3), _BACKGROUND, dtype=np.uint8)
    for index, (picture, head, path) in enumerate(tiles):
        r, c = divmod(index, columns)
        y, x = r * cell_h, c * (tile_size + 4)
        grid[y:y + 16, x:x + tile_size] = _caption(tile_size, head)
        grid[y + 16:y + 32, x:x + tile_size] = _caption(tile_size, _fit_tail(path, tile_size))
        grid[y + 32:y + cell_h, x:x + tile_size] = _thumbnail(picture, tile_size)
    bar = _colour_bar(grid.shape[0], calibrated)
    body = np.concatenate([grid, np.full((grid.shape[0], 4, 3), _BACKGROUND, dtype=np.uint8), bar], axis=1)
    missing = caption_width(title) - body.shape[1]
    if missing > 0:
        body = np.concatenate([body, np.full((body.shape[0], missing, 3), _BACKGROUND, dtype=np.uint8)], axis=1)
    return np.concatenate([_caption(body.shape[1], title, 18), body], axis=0)
