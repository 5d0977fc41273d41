"""Datasets: the MVTec AD folder layout and a generic good/defect folder layout.

Every item is a dict ``{"image": (3,H,W) float32 in [0,1], "label": 0|1, "mask": (H,W) float32
{0,1}, "path": str, "defect_type": str}``. Files are converted on load, with no special cases in
user code (each conversion is tested in ``core/tests/reliability``):

* grayscale (``L``, ``1``) is repeated to three channels; palette (``P``) and CMYK become RGB;
* alpha (``RGBA``, ``LA``, ``PA``, transparent palettes) is dropped, keeping the stored colours;
* 16-bit grayscale (``I;16``) is divided by 65535; 32-bit integer (``I``) by 255 when its values fit
  in 8 bits, else by 65535; float (``F``) images must already be in [0, 1];
* EXIF orientation is applied, so a rotated phone photo comes out upright;
* images above ``max_pixels`` (default 100 million, or ``ADCORE_MAX_PIXELS``) are refused before
  they are decoded: a decompression-bomb guard.

Masks are binarised: colour masks use their brightest channel; a mask whose values reach half its
range (an anti-aliased 0/255 mask) is cut at half, and a mask whose values all stay below half
(0/1 or class-index masks, dim colours) marks every non-zero pixel as defect.

An unreadable file raises :class:`~adcore.errors.ImageLoadError` naming it; a folder that does not
have the expected layout raises :class:`~adcore.errors.DatasetLayoutError` saying what was
expected. Nothing is skipped silently: broken symbolic links with an image extension are errors,
and an empty folder's error lists the non-image files it did find.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from adcore.errors import DatasetLayoutError, ImageLoadError, InvalidInputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "resolve_max_pixels",
    "load_image",
    "load_mask",
    "MVTecDataset",
    "FolderDataset",
    "make_loader",
    "list_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: decompression-bomb guard: images with more pixels are refused unless ``max_pixels=`` or the
#: ``ADCORE_MAX_PIXELS`` environment variable (read at each call) says otherwise
DEFAULT_MAX_PIXELS = 100_000_000

# Pillow has its own, process-wide bomb guard (Image.MAX_IMAGE_PIXELS, an error at twice it). adcore
# applies its own configurable limit before decoding, so Pillow's is lifted while adcore opens a file.
_PIL_GUARD_LOCK = threading.Lock()


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


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; hidden files and other extensions ignored.

    A broken symbolic link or a symlink loop with an image extension is an error, not a skip.
    """
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DatasetLayoutError(f"cannot list {folder}: {exc}") from exc
    images = []
    for entry in entries:
        if entry.suffix.lower() not in IMAGE_EXTENSIONS or entry.name.startswith("."):
            continue
        if entry.is_symlink() and not entry.exists():  # exists() follows links: False when broken or a loop
            raise DatasetLayoutError(f"{entry} is a broken symbolic link or a symlink loop (-> {os.readlink(entry)}); "
                                     "fix or remove it")
        if entry.is_file():
            images.append(entry)
    return images


def _other_files(folder: Path) -> str:
    """For 'no images' errors: what the folder holds instead."""
    try:
        others = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
    except OSError:
        return ""
    if not others:
        return " (the folder is empty)"
    return f" (it holds {len(others)} other entries, e.g. {', '.join(others[:3])})"


def _open(path: Path, max_pixels: int | None):
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
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
            Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {type(exc).__name__}: {exc}. Is it a corrupt, truncated or "
                             "non-image file? Remove or replace it") from exc


def load_image(path: str | Path, *, max_pixels: int | None = None) -> torch.Tensor:
    """Read any common image file as a ``(3,H,W)`` float32 tensor in [0, 1] (see the module docstring)."""
    path = Path(path)
    image = _open(path, max_pixels)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if array.min() < 0 or array.max() > 65535:
            raise ImageLoadError(f"image {path} is a 32-bit integer image with values {array.min():g}..{array.max():g}; "
                                 "expected 0..255 or 0..65535. Convert it to 8- or 16-bit")
        gray = (array / peak).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(gray))[None].expand(3, -1, -1).contiguous()
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ImageLoadError(f"image {path} is a float image containing NaN or Inf values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(f"image {path} is a float image with values {low:g}..{high:g}; expected 0..1. "
                                 "Rescale it, or save it as 8- or 16-bit")
        return torch.from_numpy(np.ascontiguousarray(array))[None].expand(3, -1, -1).contiguous()
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    else:
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_mask(path: str | Path, *, max_pixels: int | None = None) -> torch.Tensor:
    """Read a ground-truth mask as ``(H,W)`` float {0,1} (binarisation rule: see the module docstring)."""
    path = Path(path)
    image = _open(path, max_pixels)
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = image.convert("RGB" if image.mode.startswith("RGB") else "L")
    array = np.asarray(image)
    if array.dtype == bool:
        return torch.from_numpy(array.astype(np.float32))
    array = array.astype(np.float64)
    if array.ndim == 3:
        array = array.max(axis=2)  # a colour mask: any channel marks the defect
    if not np.isfinite(array).all():
        raise ImageLoadError(f"mask {path} contains NaN or Inf values")
    full = 1.0 if image.mode == "F" else 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    half = full / 2
    binary = array >= half if array.max() >= half else array > 0
    return torch.from_numpy(binary.astype(np.float32))


def _resize_image(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None or tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0].clamp(0, 1)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None or tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None, None], size=size, mode="nearest")[0, 0]


class _Samples(Dataset):
    """Shared item loading for both layouts: a list of (path, label, mask path, defect type)."""

    def __init__(self, samples: list[tuple[Path, int, Path | None, str]], image_size: int | Sequence[int] | None,
                 max_pixels: int) -> None:
        from adcore.inputs import to_size

        self.samples = samples
        self.image_size = None if image_size is None else to_size(image_size)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label, mask_path, defect = self.samples[index]
        image = load_image(path, max_pixels=self.max_pixels)
        height, width = image.shape[-2:]
        if mask_path is not None:
            mask = load_mask(mask_path, max_pixels=self.max_pixels)
            if tuple(mask.shape) != (height, width):
                ratio_image, ratio_mask = width / height, mask.shape[1] / mask.shape[0]
                if abs(ratio_image - ratio_mask) > 0.02 * ratio_image:
                    raise DatasetLayoutError(f"mask {mask_path} is {mask.shape[1]}×{mask.shape[0]} but its image {path} is "
                                             f"{width}×{height} (a different aspect ratio); they cannot belong together")
                mask = _resize_mask(mask, (height, width))
        else:
            mask = torch.zeros(height, width)
        return {"image": _resize_image(image, self.image_size), "label": label,
                "mask": _resize_mask(mask, self.image_size), "path": str(path), "defect_type": defect}

    @property
    def labels(self) -> list[int]:
        return [label for _, label, _, _ in self.samples]


class MVTecDataset(_Samples):
    """``ROOT/CATEGORY/{train/good, test/<type>, ground_truth/<type>/<name>_mask.png}``.

    Args:
        root: the dataset root (or the category folder itself when ``category`` is None).
        category: e.g. ``"bottle"``.
        split: ``"train"`` (good images only) or ``"test"``.
        image_size: resize images and masks to this size (an int or ``(h, w)``) so mixed sizes batch;
            ``None`` keeps each file's own size.
        missing_masks: ``"error"`` (default) or ``"empty"`` to treat a defect image without a mask as
            having an all-zero mask (pixel metrics then undercount it).
    """

    def __init__(self, root: str | Path, category: str | None = None, split: str = "train", *,
                 image_size: int | Sequence[int] | None = 256, missing_masks: str = "error",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if split not in ("train", "test"):
            raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")
        if missing_masks not in ("error", "empty"):
            raise InvalidInputError(f"missing_masks must be 'error' or 'empty', got {missing_masks!r}")
        folder = Path(root) / category if category else Path(root)
        expected = ("expected the MVTec AD layout CATEGORY/train/good/*.png, CATEGORY/test/<type>/*.png, "
                    "CATEGORY/ground_truth/<type>/<name>_mask.png")
        if not folder.is_dir():
            raise DatasetLayoutError(f"dataset folder {folder} does not exist; {expected}")
        split_dir = folder / split
        if not split_dir.is_dir():
            found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise DatasetLayoutError(f"{folder} has no '{split}' folder (found {found}); {expected}")
        self.root, self.category, self.split = folder, category or folder.name, split
        samples: list[tuple[Path, int, Path | None, str]] = []
        types = ["good"] if split == "train" else sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if split == "train" and not (split_dir / "good").is_dir():
            raise DatasetLayoutError(f"{split_dir} has no 'good' folder of defect-free training images; {expected}")
        for defect in types:
            for image_path in list_images(split_dir / defect):
                if defect == "good":
                    samples.append((image_path, 0, None, defect))
                    continue
                mask_path = folder / "ground_truth" / defect / f"{image_path.stem}_mask.png"
                if not mask_path.is_file():
                    candidates = list((folder / "ground_truth" / defect).glob(f"{image_path.stem}.*")) \
                        if (folder / "ground_truth" / defect).is_dir() else []
                    if candidates:
                        mask_path = candidates[0]
                    elif missing_masks == "error":
                        raise DatasetLayoutError(f"defect image {image_path} has no mask at {mask_path}; add it, or pass "
                                                 "missing_masks='empty' to evaluate image-level only for it")
                    else:
                        mask_path = None
                samples.append((image_path, 1, mask_path, defect))
        if not samples:
            raise DatasetLayoutError(f"no images found under {split_dir} (extensions {', '.join(IMAGE_EXTENSIONS)}); {expected}")
        if split == "test":
            _warn_orphan_masks(folder, samples)
        super().__init__(samples, image_size, max_pixels)


def _warn_orphan_masks(folder: Path, samples: list[tuple[Path, int, Path | None, str]]) -> None:
    used = {m.resolve() for _, _, m, _ in samples if m is not None}
    truth = folder / "ground_truth"
    if not truth.is_dir():
        return
    orphans = [m for d in truth.iterdir() if d.is_dir() for m in list_images(d) if m.resolve() not in used]
    if orphans:
        warnings.warn(f"{len(orphans)} mask(s) under {truth} have no test image, e.g. {orphans[0]}", stacklevel=3)


class FolderDataset(_Samples):
    """Generic folders: ``good_dir`` of defect-free images, optional ``defect_dirs`` and ``mask_dir``.

    Masks are looked up in ``mask_dir`` as ``<stem>_mask.<ext>`` or ``<stem>.<ext>``.
    """

    def __init__(self, good_dir: str | Path, defect_dirs: Sequence[str | Path] = (), mask_dir: str | Path | None = None,
                 *, image_size: int | Sequence[int] | None = 256, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        samples: list[tuple[Path, int, Path | None, str]] = []
        for folder, label in [(Path(good_dir), 0)] + [(Path(d), 1) for d in defect_dirs]:
            if not folder.is_dir():
                raise DatasetLayoutError(f"image folder {folder} does not exist")
            images = list_images(folder)
            if not images:
                raise DatasetLayoutError(f"image folder {folder} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            for path in images:
                mask = None
                if label and mask_dir is not None:
                    found = [p for p in Path(mask_dir).glob(f"{path.stem}*") if p.stem in (path.stem, f"{path.stem}_mask")]
                    mask = found[0] if found else None
                samples.append((path, label, mask, "good" if label == 0 else folder.name))
        super().__init__(samples, image_size, max_pixels)


def make_loader(dataset: Dataset, batch_size: int = 8, *, shuffle: bool = False, num_workers: int = 0) -> DataLoader:
    """A DataLoader over a dataset whose items are dicts (paths are collated as lists)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)
