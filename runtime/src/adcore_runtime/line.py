"""``adcore predict``'s per-image outputs without torch: the result row, the defect regions and
mask, the mask PNG and the heatmap picture, drawn as ``adcore.line`` draws them.

``adcore predict --executor ray`` scores an exported artefact in actors that have only
adcore-runtime installed (:mod:`adcore_runtime.batches`); the driver writes what they return with
adcore's own writer, so what they return must be what adcore's line would have produced: the
same row keys and conventions (``adcore.line.sink.render``), the same regions (8-connected,
``min_area``, ordered by peak; ``adcore.line.regions``) and the same heatmap picture (the input,
the normalised map on ``turbo`` with the pixel threshold at 0.5, white region contours, a colour
bar and a caption; ``adcore.line.heatmaps``), in numpy and Pillow. adcore's versions use scipy and
matplotlib, which this distribution does not install; core tests check that both draw the same
pixels for the same map.

This is a second copy of adcore's drawing code, kept on purpose: adcore-runtime must not import
adcore (it installs without torch), and adcore must not need adcore-runtime.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from adcore_runtime.regions import find_regions_and_mask
from adcore_runtime.turbo import turbo

__all__ = ["normalized_map", "regions_and_mask", "render_heatmap", "png_bytes", "result_row", "error_row",
           "heatmap_title"]

_BAR_WIDTH = 16
_TEXT = (235, 235, 235)
_BACKGROUND = (24, 24, 24)
_CONTOUR = (255, 255, 255)
#: adcore's HeatmapStyle().alpha: the weight of the colours over the image
ALPHA = 0.45


def normalized_map(amap: np.ndarray, pixel_threshold: float | None, pixel_scale: float | None) -> np.ndarray:
    """The map on the fixed [0, 1] scale (threshold at 0.5), or min..max when uncalibrated
    (``adcore.line.sink.normalized_map``; the tanh form of ``adcore.scoring.normalize_score``)."""
    if pixel_threshold is not None and pixel_scale is not None:
        z = (amap.astype(np.float64) - pixel_threshold) / pixel_scale
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)
    low, high = float(amap.min()), float(amap.max())
    return ((amap - low) / max(high - low, 1e-12)).astype(np.float32)


def regions_and_mask(amap: np.ndarray, pixel_threshold: float | None,
                     min_area: int) -> tuple[list[dict] | None, np.ndarray | None]:
    """The row's ``regions`` and the defect mask (both ``None`` without a pixel threshold)."""
    if pixel_threshold is None:
        return None, None
    regions, mask = find_regions_and_mask(amap, pixel_threshold, min_area=min_area)
    # adcore.line.regions orders by peak only, ties in the order the components are met (raster order)
    regions = sorted(regions, key=lambda region: -region.peak)
    return [region.as_dict() for region in regions], mask


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _shift_or(mask: np.ndarray) -> np.ndarray:
    """Each pixel or'ed with its four neighbours (outside the image counts as False)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _contour(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary: ``mask & ~binary_erosion(mask, border_value=0)`` with scipy's default
    cross, thickened by one binary dilation on images above 600 pixels (as adcore draws it)."""
    if not mask.any():
        return mask
    eroded = ~_shift_or(~mask)
    eroded[[0, -1], :] = False  # border_value=0: a pixel on the edge has an outside neighbour
    eroded[:, [0, -1]] = False
    edge = mask & ~eroded
    if max(mask.shape) > 600:
        edge = _shift_or(edge)
    return edge


def _overlay(image: np.ndarray, normalized: np.ndarray, mask: np.ndarray | None, alpha: float) -> np.ndarray:
    blended = (1 - alpha) * np.clip(image, 0, 1) + alpha * turbo(normalized)
    out = (blended * 255).round().astype(np.uint8)
    if mask is not None:
        out[_contour(mask)] = _CONTOUR
    return out


def _colour_bar(height: int, calibrated: bool) -> np.ndarray:
    from PIL import Image, ImageDraw

    label_width = 62 if calibrated else 50
    ramp = turbo(np.linspace(1.0, 0.0, height)[:, None].repeat(_BAR_WIDTH, axis=1))
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


def _printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


def _caption(width: int, text: str, height: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    ImageDraw.Draw(canvas).text((3, 2), _printable(text), fill=_TEXT, font=_font(11))
    return np.asarray(canvas)


def render_heatmap(image: np.ndarray, normalized: np.ndarray, mask: np.ndarray | None, *, title: str,
                   calibrated: bool, side_by_side: bool = False, alpha: float = ALPHA) -> np.ndarray:
    """uint8 ``(H',W',3)``: caption on top, then ``[input |] overlay | bar`` (``adcore.line.heatmaps.render_heatmap``);
    ``image`` float ``(H,W,3)`` and ``normalized`` ``(H,W)``, both in [0, 1] at the image's own size."""
    height = image.shape[0]
    panels = [_overlay(image, normalized, mask, alpha)]
    if side_by_side:
        panels.insert(0, (np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    gap = np.full((height, 4, 3), _BACKGROUND, dtype=np.uint8)
    row: list[np.ndarray] = []
    for panel in panels:
        row += [panel, gap]
    row.append(_colour_bar(height, calibrated))
    body = np.concatenate(row, axis=1)
    missing = int(_font(11).getlength(_printable(title))) + 6 - body.shape[1]
    if missing > 0:  # a small image: the canvas widened so the caption is readable, panels unscaled
        body = np.concatenate([body, np.full((height, missing, 3), _BACKGROUND, dtype=np.uint8)], axis=1)
    return np.concatenate([_caption(body.shape[1], title), body], axis=0)


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 ``(H,W,3)`` or ``(H,W)`` array as PNG bytes, compressed as adcore writes them."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def heatmap_title(name: str, score: float, normalized: float | None, anomalous: bool | None) -> str:
    verdict = "" if anomalous is None else ("  ANOMALOUS" if anomalous else "  ok")
    readable = "" if normalized is None else f"  norm {normalized:.3f}"
    return f"{name}  score {score:.4g}{readable}{verdict}"


def result_row(path: str, score: float, normalized: float | None, threshold: float | None, anomalous: bool | None,
               regions: list[dict] | None) -> dict[str, Any]:
    """One image's row, keys in ``adcore predict``'s order."""
    return {"path": path, "score": score, "normalized_score": normalized, "threshold": threshold,
            "anomalous": anomalous, "regions": regions, "error": None}


def error_row(path: str, threshold: float | None, error: str) -> dict[str, Any]:
    """The row of a file that could not be scored (the reason in ``error``)."""
    return {"path": path, "score": None, "normalized_score": None, "threshold": threshold, "anomalous": None,
            "regions": None, "error": error}
