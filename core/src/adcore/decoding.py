"""How large an image may be, and how much smaller it may be decoded: the limits :mod:`adcore.data` applies.

The decompression-bomb guard (``max_pixels``, ``ADCORE_MAX_PIXELS``, or a default sized to this
machine by :func:`default_max_pixels`), what decoding an image costs in memory
(:func:`decode_bytes`), and the integer factor a large image may be decoded smaller by when the
caller resizes it anyway (:func:`reduction_factor`).
"""

from __future__ import annotations

import os
from typing import Any

from adcore.errors import InvalidInputError

__all__ = ["DEFAULT_MAX_PIXELS", "MIN_DEFAULT_MAX_PIXELS", "PEAK_BYTES_PER_PIXEL", "REDUCE_ABOVE_PIXELS",
           "default_max_pixels", "resolve_max_pixels", "decode_bytes", "reduction_factor"]

#: the most the default decompression-bomb guard allows (on a machine with memory to spare); images
#: with more pixels than the guard are refused unless ``max_pixels=`` or ``ADCORE_MAX_PIXELS`` (read
#: at each call) says otherwise
DEFAULT_MAX_PIXELS = 100_000_000
#: the least the default guard allows, however small the machine
MIN_DEFAULT_MAX_PIXELS = 4_000_000
#: memory a full-resolution image costs at its peak in predict (4.5 GB for a 5,000×5,000 PNG)
PEAK_BYTES_PER_PIXEL = 180
#: images above this many pixels are decoded reduced when a ``target_size`` allows it
REDUCE_ABOVE_PIXELS = 16_000_000


def default_max_pixels() -> int:
    """The default guard for this machine: half its memory at :data:`PEAK_BYTES_PER_PIXEL`, clamped to
    [:data:`MIN_DEFAULT_MAX_PIXELS`, :data:`DEFAULT_MAX_PIXELS`] (the upper bound when memory is unknown)."""
    from adcore.memory import total_memory_bytes

    total = total_memory_bytes()
    if total is None:
        return DEFAULT_MAX_PIXELS
    return int(min(DEFAULT_MAX_PIXELS, max(MIN_DEFAULT_MAX_PIXELS, total // 2 // PEAK_BYTES_PER_PIXEL)))


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """``max_pixels`` if given, else ``ADCORE_MAX_PIXELS``, else :func:`default_max_pixels`; validated."""
    source = "max_pixels"
    if max_pixels is None:
        raw = os.environ.get("ADCORE_MAX_PIXELS", "").strip().replace("_", "")
        if not raw:
            return default_max_pixels()
        source = "ADCORE_MAX_PIXELS"
        try:
            max_pixels = int(raw)
        except ValueError:
            raise InvalidInputError(f"ADCORE_MAX_PIXELS must be a positive integer number of pixels, got "
                                    f"{os.environ['ADCORE_MAX_PIXELS']!r}") from None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InvalidInputError(f"{source} must be a positive integer number of pixels, got {max_pixels!r}")
    return max_pixels


_BAND_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


def decode_bytes(image: Any, width: int, height: int) -> int:
    """What decoding ``image`` takes in memory: its pixels × bands × bytes per band."""
    bands = len(image.getbands()) if hasattr(image, "getbands") else 3
    return width * height * bands * _BAND_BYTES.get(image.mode, 1)


def reduction_factor(width: int, height: int, target: tuple[int, int] | None) -> int:
    """The integer factor an image may be decoded smaller by and still be at least ``target`` per side
    whichever way EXIF orientation turns it; 1 when it is not large enough to bother."""
    if target is None or width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    long_side, short_side = max(width, height), min(width, height)
    factor = min(long_side // max(target), short_side // min(target))
    return factor if factor >= 2 else 1
