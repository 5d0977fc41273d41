"""Uploads in, results out: decoding the images a request carries, and each image's JSON answer.

Decoding is :func:`adcore.data.load_image` on the uploaded bytes (the same conversions and the
same decompression-bomb guard as ``adcore predict``; nothing is written to or read from a path),
then :func:`adcore.line.decoding.resize_for_detector`, so a served score equals the CLI's. After
the detector, the map goes back to the image's size and through :func:`adcore.line.find_regions`,
and ``?heatmap=true`` adds the overlay that ``adcore predict`` draws (:mod:`adcore.line.heatmaps`:
the fixed turbo scale, pixel threshold at 0.5, region contours in white) as a base64 PNG.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import torch

from adcore.serve.batching import ImageScore
from adcore.serve.errors import ApiError

__all__ = ["Upload", "DecodedUpload", "decode_upload", "decode_all", "image_result"]


@dataclass(frozen=True)
class Upload:
    """One image of a request: its multipart ``part`` (field name; ``body`` for a raw upload), its
    position ``index`` in the request, the client's ``filename`` (a label only) and its bytes."""

    part: str
    index: int
    filename: str | None
    data: bytes

    @property
    def label(self) -> str:
        return self.filename or f"{self.part}[{self.index}]"

    def where(self) -> dict[str, Any]:
        return {"part": self.part, "index": self.index, "filename": self.filename}


@dataclass
class DecodedUpload:
    upload: Upload
    image: torch.Tensor
    full: torch.Tensor
    size: tuple[int, int]


def decode_upload(upload: Upload, load_size: tuple[int, int] | None, *, max_pixels: int | None = None) -> DecodedUpload:
    """The upload as the detector's input; a 400 naming the part when it is not a usable image."""
    from adcore.data import load_image
    from adcore.errors import AdcoreError
    from adcore.line.decoding import resize_for_detector

    try:
        full = load_image(upload.label, max_pixels=max_pixels, data=upload.data)
    except (AdcoreError, OSError, ValueError, MemoryError) as exc:
        raise ApiError(400, "cannot read image", {**upload.where(), "reason": str(exc)}) from None
    height, width = (int(side) for side in full.shape[-2:])
    if height < 2 or width < 2:
        raise ApiError(400, "image too small", {**upload.where(), "reason": f"{height}×{width} pixels; at least 2×2"})
    return DecodedUpload(upload, resize_for_detector(full, load_size), full, (height, width))


def decode_all(uploads: list[Upload], load_size: tuple[int, int] | None,
               max_pixels: int | None = None) -> list[DecodedUpload]:
    """Every upload of a request, in order; the first bad one is a 400 naming it. The images of one
    request may hold at most ``max_pixels`` together (the decompression-bomb guard of one image), so a
    request of many small files that decode huge cannot take the server's memory."""
    from adcore.decoding import resolve_max_pixels

    budget = resolve_max_pixels(max_pixels)
    decoded: list[DecodedUpload] = []
    held = 0
    for upload in uploads:
        try:
            item = decode_upload(upload, load_size, max_pixels=max(1, budget - held))
        except ApiError as exc:
            if held and "decompression-bomb" in str(exc.detail.get("reason", "")):
                exc.detail["reason"] = (f"the images of this request hold more than {budget:,} pixels together (the "
                                        f"decompression-bomb guard of one request); {held:,} came before this one. Send "
                                        "fewer images per request")
            raise
        held += item.size[0] * item.size[1]
        decoded.append(item)
    return decoded


def image_result(decoded: DecodedUpload, scored: ImageScore, calibration: Any, *, heatmap: bool,
                 min_area: int = 1) -> dict[str, Any]:
    """One image's answer: the keys of ``adcore predict``'s ``results.jsonl`` (Contract B), the image's
    name and size, and ``heatmap_png`` when asked for."""
    from adcore.line.regions import find_regions
    from adcore.line.sink import map_at_size

    amap = map_at_size(scored.amap, decoded.size)
    regions, mask = None, None
    if calibration.pixel_threshold is not None:
        found, mask = find_regions(amap, calibration.pixel_threshold, min_area=min_area)
        regions = [region.to_json() for region in found]
    result: dict[str, Any] = {"image": decoded.upload.label, **decoded.upload.where(),
                              "width": decoded.size[1], "height": decoded.size[0], "score": scored.score,
                              "normalized_score": scored.normalized, "threshold": calibration.threshold,
                              "anomalous": scored.anomalous, "regions": regions}
    if heatmap:
        from adcore.line.heatmaps import overlay, png_bytes
        from adcore.line.sink import normalized_map

        picture = overlay(decoded.full.permute(1, 2, 0).numpy(), normalized_map(amap, calibration), mask, 0.45)
        result["heatmap_png"] = base64.b64encode(png_bytes(picture)).decode("ascii")
    return result
