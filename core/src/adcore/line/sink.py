"""The writer thread: everything after the detector, off the hot path.

For each scored image it brings the map to the image's own size, finds the defect regions, writes
the heatmap and mask PNGs, and only then appends the image's row (so a row in the outputs means
all of that image's files exist). The queue in front of it is bounded: when writing is slower than
scoring, the detector waits instead of memory growing.
"""

from __future__ import annotations

import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from adcore.line.decoding import Decoded
from adcore.line.heatmaps import HeatmapStyle, png_bytes, render_heatmap
from adcore.line.outputs import HEATMAPS, MASKS, RunOutputs
from adcore.line.regions import find_regions

__all__ = ["Scored", "Calibration", "Sink", "Rendered", "render", "write_rendered", "output_name", "map_at_size", "normalized_map", "print_result"]

_DONE = object()


@dataclass(frozen=True)
class Calibration:
    """The model's thresholds and scales (any may be ``None``: an uncalibrated model)."""

    threshold: float | None
    score_scale: float | None
    pixel_threshold: float | None
    pixel_scale: float | None

    @classmethod
    def of(cls, detector: Any) -> Calibration:
        return cls(*(getattr(detector, name, None) for name in
                     ("threshold_", "score_scale_", "pixel_threshold_", "pixel_scale_")))

    @property
    def pixels(self) -> bool:
        return self.pixel_threshold is not None and self.pixel_scale is not None


@dataclass
class Scored:
    """One image through the detector: its decoded input, raw score, normalised score, label, map."""

    decoded: Decoded
    score: float
    normalized: float | None
    anomalous: bool | None
    amap: torch.Tensor


def output_name(folder: Path, name: str) -> Path:
    """``folder/NAME.png`` for an input named ``NAME`` (``cam1/img001.png`` -> ``cam1/img001.png.png``)."""
    return folder.joinpath(*name.split("/")).with_name(name.split("/")[-1] + ".png")


def map_at_size(amap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A ``(h,w)`` map at ``size``: bilinear, ``align_corners=False``, no antialias (Contract C)."""
    if tuple(amap.shape[-2:]) != tuple(size):
        amap = F.interpolate(amap[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return amap.detach().float().cpu().numpy()


def normalized_map(amap: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The map on the fixed [0, 1] scale (threshold at 0.5), or min..max per image when uncalibrated."""
    if calibration.pixels:
        from adcore.scoring import normalize_score

        return normalize_score(amap, calibration.pixel_threshold, calibration.pixel_scale)
    low, high = float(amap.min()), float(amap.max())
    return ((amap - low) / max(high - low, 1e-12)).astype(np.float32)


class Sink:
    """The writer thread (see the module docstring); errors surface in the scoring thread."""

    def __init__(self, outputs: RunOutputs, calibration: Calibration, *, heatmaps: bool, masks: bool,
                 min_area: int, style: HeatmapStyle, capacity: int, echo: Callable[[dict], None] | None = None):
        self.outputs, self.calibration = outputs, calibration
        self.heatmaps, self.masks, self.min_area, self.style = heatmaps, masks, min_area, style
        self.echo = echo
        self.error: BaseException | None = None
        self.written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, capacity))
        self._thread = threading.Thread(target=self._work, name="adcore-writer", daemon=True)
        self._thread.start()

    def put(self, work: Scored | Decoded | Rendered) -> None:
        """Queue a scored image, a :class:`Decoded` with an error (a skipped file), or an image
        rendered elsewhere (:func:`render`, e.g. in a Ray actor) that only needs writing."""
        if self.error is not None:
            raise self.error
        while True:
            try:
                self._queue.put(work, timeout=0.5)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def close(self) -> None:
        """Write everything queued, stop the thread, re-raise its error if it had one."""
        self._queue.put(_DONE)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while True:
            work = self._queue.get()
            if work is _DONE:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            try:
                result = self._result(work) if not isinstance(work, Rendered) else write_rendered(self.outputs, work)
                self.outputs.append(result)
                self.written += 1
                if self.echo is not None:
                    self.echo(result)
            except BaseException as exc:  # noqa: BLE001 - handed to the scoring thread
                self.error = exc

    def _result(self, work: Scored | Decoded) -> dict[str, Any]:
        return write_rendered(self.outputs, render(work, self.calibration, heatmaps=self.heatmaps, masks=self.masks,
                                                   min_area=self.min_area, style=self.style))


@dataclass
class Rendered:
    """One image made ready to write: its row and the PNG bytes of its heatmap and mask (``None``
    when not asked for), named by the input's ``name``. Small enough to travel between processes."""

    name: str
    result: dict[str, Any]
    heatmap: bytes | None = None
    mask: bytes | None = None


def render(work: Scored | Decoded, calibration: Calibration, *, heatmaps: bool, masks: bool, min_area: int,
           style: HeatmapStyle) -> Rendered:
    """Everything after the detector for one image: map at the image's size, regions, PNGs, row."""
    threshold = calibration.threshold
    if isinstance(work, Decoded):
        return Rendered(work.item.name, {"path": work.item.path, "score": None, "normalized_score": None,
                                         "threshold": threshold, "anomalous": None, "regions": None,
                                         "error": work.error})
    decoded = work.decoded
    amap = map_at_size(work.amap, decoded.size)
    regions, mask = None, None
    if calibration.pixel_threshold is not None:
        found, mask = find_regions(amap, calibration.pixel_threshold, min_area=min_area)
        regions = [region.to_json() for region in found]
    heatmap = _heatmap_png(work, amap, mask, calibration, style) if heatmaps else None
    mask_png = png_bytes(mask.astype(np.uint8) * 255) if masks and mask is not None else None
    return Rendered(decoded.item.name, {"path": decoded.item.path, "score": work.score,
                                        "normalized_score": work.normalized, "threshold": threshold,
                                        "anomalous": work.anomalous, "regions": regions, "error": None},
                    heatmap, mask_png)


def write_rendered(outputs: RunOutputs, rendered: Rendered) -> dict[str, Any]:
    """Write a rendered image's PNGs under ``outputs.out`` (heatmap, then mask); returns its row, which
    the caller appends only then (a row in the outputs means all its files exist)."""
    from adcore.files import atomic_write_bytes

    # clean_stale=False: RunOutputs swept these folders when the run was opened (a look per write
    # lists the folder: quadratic in the run's images)
    if rendered.heatmap is not None:
        atomic_write_bytes(output_name(outputs.out / HEATMAPS, rendered.name), rendered.heatmap, clean_stale=False)
    if rendered.mask is not None:
        atomic_write_bytes(output_name(outputs.out / MASKS, rendered.name), rendered.mask, clean_stale=False)
    return rendered.result


def _heatmap_png(work: Scored, amap: np.ndarray, mask: np.ndarray | None, calibration: Calibration,
                 style: HeatmapStyle) -> bytes:
    decoded = work.decoded
    full = decoded.full if decoded.full is not None else decoded.image
    image = full.permute(1, 2, 0).float().cpu().numpy()
    if image.shape[:2] != amap.shape:  # no full image kept: show the map on the resized input
        image = map_image(full, amap.shape)
    verdict = "" if work.anomalous is None else ("  ANOMALOUS" if work.anomalous else "  ok")
    readable = "" if work.normalized is None else f"  norm {work.normalized:.3f}"
    title = f"{decoded.item.name}  score {work.score:.4g}{readable}{verdict}"
    picture = render_heatmap(image, normalized_map(amap, calibration), mask, title=title,
                             calibrated=calibration.pixels, style=style)
    return png_bytes(picture)


def map_image(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(3,h,w)`` image resized to ``size`` as float ``(H,W,3)``."""
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return resized.clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def print_result(result: dict[str, Any]) -> None:
    """One stdout line per image: score, verdict, path (control characters escaped)."""
    path = result["path"]
    shown = path if path.isprintable() else repr(path)
    try:
        shown.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        shown = ascii(path)
    if result.get("error") is not None:
        print(f"-\tSKIPPED\t{shown}", flush=True)
        return
    flag = "" if result["anomalous"] is None else ("ANOMALOUS" if result["anomalous"] else "ok")
    print(f"{result['score']:.6g}\t{flag}\t{shown}", flush=True)
