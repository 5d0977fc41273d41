"""Decoding off the hot path: a pool of threads reads and resizes the next images, in input order,
while the detector scores the current batch. Pillow and torch release the GIL while they decode
and resize, so threads overlap with the detector without the cost of pickling images between
processes. A file that cannot be read becomes a :class:`Decoded` with its ``error``, never an
exception: one bad file must not stop a run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adcore.line.sources import InputImage

__all__ = ["Decoded", "decode", "decoded_in_order", "resize_for_detector"]


@dataclass
class Decoded:
    """One input after decoding: ``image`` at the detector's load size (``None`` after an error),
    ``full`` at the file's own size when a heatmap needs it, ``size`` the file's ``(H, W)``."""

    item: InputImage
    image: torch.Tensor | None = None
    full: torch.Tensor | None = None
    size: tuple[int, int] | None = None
    error: str | None = None


def resize_for_detector(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``(3,H,W)`` at ``size``: bilinear, antialiased when shrinking (BaseDetector's rule)."""
    if size is None or tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0].clamp(0, 1)


def decode(item: InputImage, load_size: tuple[int, int] | None, *, keep_full: bool,
           max_pixels: int | None = None) -> Decoded:
    """Read ``item`` (never raises for a bad file: the reason goes to ``error``)."""
    from adcore.data import load_image
    from adcore.errors import AdcoreError

    try:
        full = load_image(item.path, max_pixels=max_pixels)
    except AdcoreError as exc:
        return Decoded(item, error=str(exc))
    except (OSError, ValueError, MemoryError) as exc:  # e.g. a file removed or unreadable mid-run
        return Decoded(item, error=f"cannot read image {item.path}: {type(exc).__name__}: {exc}")
    height, width = full.shape[-2:]
    if height < 2 or width < 2:
        return Decoded(item, error=f"image {item.path} has {height}×{width} pixels, too small to score (at least 2×2)")
    return Decoded(item, resize_for_detector(full, load_size), full if keep_full else None, (int(height), int(width)))


def decoded_in_order(items: Iterable[InputImage], load_size: tuple[int, int] | None, *, workers: int,
                     keep_full: bool, window: int, max_pixels: int | None = None) -> Iterator[Decoded]:
    """Decode ``items`` with ``workers`` threads (0: in this thread), yielding them in order.

    At most ``window`` images are decoded ahead, so memory stays flat whatever the number of inputs.
    Closing the generator cancels what has not started.
    """
    if workers <= 0:
        for item in items:
            yield decode(item, load_size, keep_full=keep_full, max_pixels=max_pixels)
        return
    pending: deque[Future[Decoded]] = deque()
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adcore-decode")
    try:
        for item in source:
            pending.append(pool.submit(decode, item, load_size, keep_full=keep_full, max_pixels=max_pixels))
            if len(pending) >= window:
                break
        while pending:
            decoded = pending.popleft().result()
            following = next(source, None)
            if following is not None:
                pending.append(pool.submit(decode, following, load_size, keep_full=keep_full, max_pixels=max_pixels))
            yield decoded
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
