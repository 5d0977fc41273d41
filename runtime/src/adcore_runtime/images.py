"""Image decoding and the resize rule, in numpy and Pillow: the same numbers as adcore with torch.

Decoding follows ``adcore.data.load_image`` (grayscale, palette and CMYK become RGB; alpha is
dropped; 16-bit is divided by 65535; 32-bit integer by 255 when it fits in 8 bits, else by 65535;
float images must lie in [0, 1]; EXIF orientation is applied; images above ``max_pixels`` (default
100 million, or ``ADCORE_MAX_PIXELS``) are refused before decoding).

The resize rule is adcore's: ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=shrinking)``, where ``shrinking`` means either side gets smaller.
It is written here as per-axis filter taps (torch's antialiased kernel is Pillow's triangle filter
with its support widened by the scale; without antialias it is plain two-tap bilinear), so no torch
is needed. The main test suite checks both against adcore within 1e-5.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from adcore_runtime.errors import ImageLoadError, InvalidInputError

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "resolve_max_pixels", "load_image", "to_image_array",
           "resize_taps", "resize", "resize_image", "resize_map"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 100_000_000
_PIL_GUARD_LOCK = threading.Lock()
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """``max_pixels`` if given, else ``ADCORE_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`; validated."""
    source = "max_pixels"
    if max_pixels is None:
        raw = os.environ.get("ADCORE_MAX_PIXELS", "").strip().replace("_", "")
        if not raw:
            return DEFAULT_MAX_PIXELS
        source = "ADCORE_MAX_PIXELS"
        try:
            max_pixels = int(raw)
        except ValueError:
            raise InvalidInputError(f"ADCORE_MAX_PIXELS must be a positive integer number of pixels, got "
                                    f"{os.environ['ADCORE_MAX_PIXELS']!r}") from None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InvalidInputError(f"{source} must be a positive integer number of pixels, got {max_pixels!r}")
    return max_pixels


def _open(path: Path, max_pixels: int | None):
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = resolve_max_pixels(max_pixels)
    if path.is_symlink() and not path.exists():
        raise ImageLoadError(f"image {path} is a broken symbolic link or a symlink loop")
    if not path.exists():
        raise ImageLoadError(f"image {path} does not exist")
    if not path.is_file():
        raise ImageLoadError(f"image {path} is not a regular file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"image {path} is empty (0 bytes)")
    try:
        # Pillow's own process-wide bomb guard is lifted while the header is read: ours applies instead
        with _PIL_GUARD_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)  # reads the header only
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageLoadError(f"image {path} has no pixels ({width}×{height})")
        if width * height > limit:
            raise ImageLoadError(f"image {path} has {width}×{height} = {width * height:,} pixels, above the limit of "
                                 f"{limit:,} (a decompression-bomb guard); raise it with max_pixels= or ADCORE_MAX_PIXELS")
        image.load()
        return ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError, IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {type(exc).__name__}: {exc}. Is it a corrupt, truncated or "
                             "non-image file? Remove or replace it") from exc


def _from_pil(image: Any, where: str) -> np.ndarray:
    """A decoded Pillow image as ``(3,H,W)`` float32 in [0, 1] (adcore's conversions)."""
    if image.mode in _INT_MODES:
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if array.min() < 0 or array.max() > 65535:
            raise ImageLoadError(f"image {where} is a 32-bit integer image with values {array.min():g}..{array.max():g}; "
                                 "expected 0..255 or 0..65535. Convert it to 8- or 16-bit")
        gray = (array / peak).astype(np.float32)
        return np.repeat(gray[None], 3, axis=0)
    if image.mode == "F":
        array = np.array(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ImageLoadError(f"image {where} is a float image containing NaN or Inf values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(f"image {where} is a float image with values {low:g}..{high:g}; expected 0..1. "
                                 "Rescale it, or save it as 8- or 16-bit")
        return np.repeat(array[None], 3, axis=0)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    else:
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)


def load_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as ``(3,H,W)`` float32 in [0, 1], exactly as ``adcore.data.load_image``."""
    path = Path(path)
    return _from_pil(_open(path, max_pixels), str(path))


def to_image_array(image: Any, *, max_pixels: int | None = None) -> np.ndarray:
    """A path, a Pillow image or a numpy array as ``(3,H,W)`` float32 in [0, 1].

    Arrays may be ``(H,W)``, ``(H,W,C)`` (as Pillow and imageio give them; OpenCV's BGR must be
    flipped first) or ``(C,H,W)`` with C 1 or 3 (a 4th channel is alpha and dropped); uint8 is
    divided by 255, uint16 by 65535, floats must already lie in [0, 1].
    """
    if isinstance(image, (str, Path)):
        return load_image(image, max_pixels=max_pixels)
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a Pillow image, without importing Pillow here
        from PIL import ImageOps

        return _from_pil(ImageOps.exif_transpose(image), "given as a Pillow image")
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"an image must be a path, a Pillow image or a numpy array, got {type(image).__name__}")
    array = image
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3):
        array = array.transpose(2, 0, 1)
    elif array.ndim != 3 or array.shape[0] not in (1, 3, 4):
        raise InvalidInputError(f"an image array must be (H,W), (H,W,C) or (C,H,W) with 1, 3 or 4 channels, "
                                f"got shape {image.shape}")
    array = array[:3]
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise InvalidInputError(f"an image array has no pixels (shape {image.shape})")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(255.0)
    elif array.dtype == np.uint16:
        array = (array.astype(np.float64) / 65535.0).astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InvalidInputError("a float image array must hold finite values in [0, 1] "
                                    f"(got {float(np.nanmin(array)):g}..{float(np.nanmax(array)):g}); divide by 255 first")
    else:
        raise InvalidInputError(f"an image array must be uint8, uint16 or float, got {array.dtype}")
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return np.ascontiguousarray(array)


@lru_cache(maxsize=64)
def resize_taps(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per output index, the input indices and weights ``(out_size, K)`` of torch's bilinear resize
    (``align_corners=False``); padding taps have weight 0."""
    if in_size < 1 or out_size < 1:
        raise InvalidInputError(f"cannot resize between sizes {in_size} and {out_size}")
    # torch computes coordinates and weights in float32 for float32 images; so does this, to agree
    # to ~1e-7 instead of ~1e-5 on large images
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    out = np.arange(out_size, dtype=np.float32)
    if antialias:  # torch's _upsample_bilinear2d_aa (Pillow's triangle filter, support scaled when shrinking)
        support = scale if scale >= 1.0 else f32(1.0)
        invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
        center = scale * (out + f32(0.5))
        low = np.maximum((center - support + f32(0.5)).astype(np.int64), 0)
        high = np.minimum((center + support + f32(0.5)).astype(np.int64), in_size)
        width = int((high - low).max())
        index = low[:, None] + np.arange(width)[None, :]
        weight = np.clip(f32(1.0) - np.abs((index.astype(np.float32) - center[:, None] + f32(0.5)) * invscale), 0.0, None)
        weight[index >= high[:, None]] = 0.0
        total = weight.sum(axis=1, keepdims=True, dtype=np.float32)
        weight = np.divide(weight, total, out=np.zeros_like(weight), where=total != 0)
        index = np.minimum(index, in_size - 1)
    else:  # torch's upsample_bilinear2d: the source coordinate clamped at 0, two taps
        # torch: a float32 scale, the source coordinate computed in double, then rounded to float32
        source = np.maximum((np.float64(scale) * (out.astype(np.float64) + 0.5) - 0.5).astype(np.float32), f32(0.0))
        first = source.astype(np.int64)
        second = first + (first < in_size - 1)
        fraction = source - first.astype(np.float32)
        index = np.stack([first, second], axis=1)
        weight = np.stack([f32(1.0) - fraction, fraction], axis=1)
    index.setflags(write=False)
    weight = weight.astype(np.float32)
    weight.setflags(write=False)
    return index, weight


def _resize_axis(array: np.ndarray, axis: int, out_size: int, antialias: bool) -> np.ndarray:
    index, weight = resize_taps(array.shape[axis], out_size, antialias)
    moved = np.moveaxis(array, axis, -1)
    result = np.zeros(moved.shape[:-1] + (out_size,), dtype=np.float32)
    for tap in range(index.shape[1]):  # K gathers of the output's size: no dense (out × in) matrix
        result += moved[..., index[:, tap]] * weight[:, tap]
    return np.moveaxis(result, -1, axis)


def resize(array: np.ndarray, size: tuple[int, int], *, antialias: bool) -> np.ndarray:
    """Resize the last two axes of a float array to ``size`` = (h, w) with torch's bilinear rule."""
    height, width = int(size[0]), int(size[1])
    array = np.asarray(array, dtype=np.float32)
    if tuple(array.shape[-2:]) == (height, width):
        return array
    result = _resize_axis(array, array.ndim - 1, width, antialias)  # width first, as torch does
    return _resize_axis(result, array.ndim - 2, height, antialias)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """adcore's image rule (``BaseDetector``, ``adcore.inputs.resize_images``): bilinear,
    antialiased when either side shrinks. Its weights are non-negative and sum to 1, so [0, 1] stays."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    return resize(image, size, antialias=shrinking)


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """adcore's map rule: bilinear back to the image's size, no antialias."""
    return resize(anomaly_map, size, antialias=False)
