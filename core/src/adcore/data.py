"""Datasets: the MVTec AD folder layout and a generic good/defect folder layout.

Every item is a dict ``{"image": (3,H,W) float32 in [0,1], "label": 0|1, "mask": (H,W) float32
{0,1}, "path": str, "defect_type": str}``. Files are converted on load, with no special cases in
user code (each conversion is tested in ``core/tests/reliability``):

* grayscale (``L``, ``1``) is repeated to three channels; palette (``P``) and CMYK become RGB;
* alpha (``RGBA``, ``LA``, ``PA``, transparent palettes) is dropped, keeping the stored colours;
* 16-bit grayscale (``I;16``) is divided by 65535; 32-bit integer (``I``) by 255 when its values fit
  in 8 bits, else by 65535; float (``F``) images must already be in [0, 1];
* EXIF orientation is applied, so a rotated phone photo comes out upright;
* images above ``max_pixels`` (or ``ADCORE_MAX_PIXELS``) are refused before they are decoded: a
  decompression-bomb guard whose default is sized to this machine (:func:`default_max_pixels`: half
  its memory at about 180 bytes per pixel, the measured peak of a full-resolution predict, between
  4 and 100 million pixels); the error says how much memory the image would need;
* with ``target_size`` (the datasets pass their ``image_size``), an image of more than
  :data:`REDUCE_ABOVE_PIXELS` that is at least twice the target per side is decoded reduced by an
  integer factor (JPEG: Pillow's ``draft``, decoding at 1/2, 1/4 or 1/8 scale; others:
  ``Image.reduce``, a box filter), never below the target, so a 50-megapixel photo resized to
  256 px anyway never becomes a full-resolution float tensor. Smaller images decode exactly as
  before.

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

from adcore.decoding import (DEFAULT_MAX_PIXELS, PEAK_BYTES_PER_PIXEL, REDUCE_ABOVE_PIXELS, decode_bytes,
                             default_max_pixels, reduction_factor, resolve_max_pixels)
from adcore.errors import DatasetLayoutError, ImageLoadError, InvalidInputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "PEAK_BYTES_PER_PIXEL",
    "REDUCE_ABOVE_PIXELS",
    "default_max_pixels",
    "resolve_max_pixels",
    "load_image",
    "load_mask",
    "MVTecDataset",
    "FolderDataset",
    "make_loader",
    "collate_items",
    "list_images",
    "summarize_names",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Pillow has its own, process-wide bomb guard (Image.MAX_IMAGE_PIXELS, an error at twice it). adcore
# applies its own configurable limit before decoding, so Pillow's is lifted while adcore opens a file.
_PIL_GUARD_LOCK = threading.Lock()


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


def summarize_names(names: Sequence[str], limit: int = 10) -> str:
    """``"a, b, c"``, or the first ``limit`` names then ``"... and N more"``: folder listings in error
    messages stay one readable line even for a folder of 50,000 files."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... and {len(names) - limit} more"


def _other_files(folder: Path) -> str:
    """For 'no images' errors: what the folder holds instead (at most ten names)."""
    try:
        others = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
    except OSError:
        return ""
    if not others:
        return " (the folder is empty)"
    return f" (it holds {len(others)} other entries, e.g. {summarize_names(others)})"


def _open(path: Path, max_pixels: int | None, target: tuple[int, int] | None = None, data: bytes | None = None):
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    limit = resolve_max_pixels(max_pixels)
    if data is None:
        if path.is_symlink() and not path.exists():
            raise ImageLoadError(f"image {path} is a broken symbolic link or a symlink loop")
        if not path.exists():
            raise ImageLoadError(f"image {path} does not exist")
        if not path.is_file():
            raise ImageLoadError(f"image {path} is not a regular file")
    if (path.stat().st_size if data is None else len(data)) == 0:
        raise ImageLoadError(f"image {path} is empty (0 bytes)")
    try:
        with _PIL_GUARD_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path if data is None else io.BytesIO(data))  # reads the header only
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageLoadError(f"image {path} has no pixels ({width}×{height})")
        factor = reduction_factor(width, height, target)
        out_width, out_height = -(-width // factor), -(-height // factor)
        decode = decode_bytes(image, width, height)
        tensor = out_width * out_height * 12  # the (3,H,W) float32 result
        from adcore.memory import available_memory_bytes, format_bytes

        cost = f"decoding it needs about {format_bytes(decode)} and its float tensor {format_bytes(tensor)}"
        if width * height > limit:
            raise ImageLoadError(f"image {path} has {width}×{height} = {width * height:,} pixels, above the limit of "
                                 f"{limit:,} (a decompression-bomb guard); {cost}. Raise the limit with max_pixels= "
                                 "or ADCORE_MAX_PIXELS if the machine has the memory")
        available = available_memory_bytes()
        if available is not None and decode + tensor > available:
            raise ImageLoadError(f"image {path} ({width}×{height}) cannot be read: {cost}, more than the "
                                 f"{format_bytes(available)} of memory available")
        if factor > 1 and image.format == "JPEG":
            image.draft(image.mode, (out_width, out_height))  # DCT scaling: decodes at 1/2, 1/4 or 1/8
            factor = max(1, min(image.size[0] // out_width, image.size[1] // out_height))
        image.load()
        if factor > 1:
            try:
                image = image.reduce(factor)
            except (ValueError, NotImplementedError):
                pass  # a mode reduce does not support: kept at full size
        return ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except PermissionError as exc:
        raise ImageLoadError(f"cannot read image {path}: permission denied; give this user read access to it "
                             "(or run as a user who has it)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError, IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError) as exc:
        # Pillow's format plugins raise all of these on malformed files; each means "this file is bad"
        raise ImageLoadError(f"cannot read image {path}: {type(exc).__name__}: {exc}. Is it a corrupt, truncated or "
                             "non-image file? Remove or replace it") from exc


def load_image(path: str | Path, *, max_pixels: int | None = None,
               target_size: int | Sequence[int] | None = None, data: bytes | None = None) -> torch.Tensor:
    """Read any common image file as a ``(3,H,W)`` float32 tensor in [0, 1] (see the module docstring).

    ``target_size`` (a side or ``(height, width)``): the size the caller will resize the image to. A
    large image (more than :data:`REDUCE_ABOVE_PIXELS`) is then decoded reduced by an integer
    factor, never below ``target_size``; the caller still resizes to the exact size.
    ``data``: decode these bytes instead (an upload to ``adcore serve``; the same rules and guard),
    ``path`` then only names the image in messages and no file is read.
    """
    path = Path(path)
    target = None
    if target_size is not None:
        from adcore.inputs import to_size

        target = tuple(to_size(target_size))
    image = _open(path, max_pixels, target, data)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if array.min() < 0 or array.max() > 65535:
            raise ImageLoadError(f"image {path} is a 32-bit integer image with values {array.min():g}..{array.max():g}; "
                                 "expected 0..255 or 0..65535. Convert it to 8- or 16-bit")
        gray = (array / peak).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(gray))[None].expand(3, -1, -1).contiguous()
    if image.mode == "F":
        array = np.array(image, dtype=np.float32)  # a writable copy
        if not np.isfinite(array).all():
            raise ImageLoadError(f"image {path} is a float image containing NaN or Inf values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(f"image {path} is a float image with values {low:g}..{high:g}; expected 0..1. "
                                 "Rescale it, or save it as 8- or 16-bit")
        return torch.from_numpy(array)[None].expand(3, -1, -1).contiguous()
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
                 max_pixels: int | None) -> None:
        from adcore.inputs import to_size

        self.samples = samples
        self.image_size = None if image_size is None else to_size(image_size)
        self.max_pixels = None if max_pixels is None else resolve_max_pixels(max_pixels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label, mask_path, defect = self.samples[index]
        image = load_image(path, max_pixels=self.max_pixels, target_size=self.image_size)
        height, width = image.shape[-2:]
        if mask_path is not None:
            mask = load_mask(mask_path, max_pixels=self.max_pixels)
            if tuple(mask.shape) != (height, width):
                ratio_image, ratio_mask = width / height, mask.shape[1] / mask.shape[0]
                if abs(ratio_image - ratio_mask) > 0.02 * ratio_image:
                    raise DatasetLayoutError(f"mask {mask_path} is {mask.shape[1]}×{mask.shape[0]} but its image {path} is "
                                             f"{width}×{height} (a different aspect ratio); they cannot belong together")
                # same aspect ratio, other resolution (e.g. masks drawn at half size): resized, nearest-neighbour
                mask = _resize_mask(mask, (height, width))
        else:
            mask = torch.zeros(height, width)
        return {"image": _resize_image(image, self.image_size), "label": label,
                "mask": _resize_mask(mask, self.image_size), "path": str(path), "defect_type": defect}

    @property
    def labels(self) -> list[int]:
        return [label for _, label, _, _ in self.samples]

    @property
    def masks_given(self) -> bool:
        """False when the set holds defect images and not one of them has a mask file, so only
        image-level metrics mean anything (:func:`adcore.evaluation.evaluate_detector` reads this)."""
        defect_masks = [mask for _, label, mask, _ in self.samples if label]
        return not defect_masks or any(mask is not None for mask in defect_masks)


def _mask_index(folder: Path | None) -> dict[str, Path]:
    """``{image stem: mask path}`` for masks named ``<stem>_mask.<ext>`` (preferred) or ``<stem>.<ext>``."""
    if folder is None or not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for mask in reversed(list_images(folder)):  # reversed + setdefault order: .png wins over .tif for equal stems
        if mask.stem.endswith("_mask"):
            index[mask.stem[: -len("_mask")]] = mask
    for mask in list_images(folder):
        index.setdefault(mask.stem, mask)
    return index


def _check_missing_masks(missing_masks: str) -> None:
    if missing_masks not in ("error", "empty"):
        raise InvalidInputError(f"missing_masks must be 'error' or 'empty', got {missing_masks!r}")


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
        max_pixels: the decompression-bomb limit per image (default ``ADCORE_MAX_PIXELS`` or 100 M).
    """

    def __init__(self, root: str | Path, category: str | None = None, split: str = "train", *,
                 image_size: int | Sequence[int] | None = 256, missing_masks: str = "error",
                 max_pixels: int | None = None) -> None:
        if split not in ("train", "test"):
            raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")
        _check_missing_masks(missing_masks)
        folder = Path(root) / category if category else Path(root)
        expected = ("expected the MVTec AD layout CATEGORY/train/good/*.png, CATEGORY/test/<type>/*.png, "
                    "CATEGORY/ground_truth/<type>/<name>_mask.png")
        if not folder.is_dir():
            raise DatasetLayoutError(f"dataset folder {folder} does not exist; {expected}")
        split_dir = folder / split
        if not split_dir.is_dir():
            found = sorted(p.name for p in folder.iterdir())
            found_text = f"{found[:10]} and {len(found) - 10} more" if len(found) > 10 else str(found)
            raise DatasetLayoutError(f"{folder} has no '{split}' folder (found {found_text}); {expected}")
        loose = list_images(split_dir)
        if loose:
            raise DatasetLayoutError(f"{split_dir} holds {len(loose)} image(s) directly (e.g. {loose[0].name}); put them "
                                     f"in {split_dir / 'good'} or {split_dir}/<defect type>/; {expected}")
        self.root, self.category, self.split = folder, category or folder.name, split
        self.missing_masks = missing_masks
        if split == "train":
            if not (split_dir / "good").is_dir():
                raise DatasetLayoutError(f"{split_dir} has no 'good' folder of defect-free training images; {expected}")
            types = ["good"]
        else:
            types = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            _refuse_loops(split_dir, types)
        samples: list[tuple[Path, int, Path | None, str]] = []
        for defect in types:
            images = list_images(split_dir / defect)
            if defect == "good":
                samples.extend((image_path, 0, None, defect) for image_path in images)
                continue
            masks = _mask_index(folder / "ground_truth" / defect)
            for image_path in images:
                mask_path = masks.get(image_path.stem)
                if mask_path is None:
                    if missing_masks == "error":
                        expected_mask = folder / "ground_truth" / defect / f"{image_path.stem}_mask.png"
                        raise DatasetLayoutError(f"defect image {image_path} has no mask at {expected_mask}; add it, or "
                                                 "pass missing_masks='empty' to evaluate image-level only for it")
                samples.append((image_path, 1, mask_path, defect))
        if not samples:
            where = split_dir / "good" if split == "train" else split_dir
            raise DatasetLayoutError(f"no images found under {where}{_other_files(where)}; image extensions are "
                                     f"{', '.join(IMAGE_EXTENSIONS)}; {expected}")
        if split == "test":
            _warn_orphan_masks(folder, samples)
        super().__init__(samples, image_size, max_pixels)


def _refuse_loops(split_dir: Path, types: list[str]) -> None:
    """A defect-type folder that links back to the split folder or above would list the wrong files."""
    resolved_split = split_dir.resolve()
    for name in types:
        target = (split_dir / name).resolve()
        if target == resolved_split or target in resolved_split.parents:
            raise DatasetLayoutError(f"{split_dir / name} is a symbolic link back to {target} (a loop); "
                                     "defect-type folders must hold images")


def _warn_orphan_masks(folder: Path, samples: list[tuple[Path, int, Path | None, str]]) -> None:
    used = {m.resolve() for _, _, m, _ in samples if m is not None}
    truth = folder / "ground_truth"
    if not truth.is_dir():
        return
    orphans = [m for d in sorted(truth.iterdir()) if d.is_dir() for m in list_images(d) if m.resolve() not in used]
    if orphans:
        warnings.warn(f"{len(orphans)} mask(s) under {truth} have no test image, e.g. {orphans[0]}; they are not "
                      "used", stacklevel=3)


class FolderDataset(_Samples):
    """Generic folders: ``good_dir`` of defect-free images, optional ``defect_dirs`` and ``mask_dir``.

    Masks are looked up in ``mask_dir`` as ``<stem>_mask.<ext>`` or ``<stem>.<ext>``. With a
    ``mask_dir``, a defect image without a mask is an error unless ``missing_masks="empty"``.
    Without one the set has no masks (:attr:`masks_given` is False) and is evaluated image-level.
    """

    def __init__(self, good_dir: str | Path, defect_dirs: Sequence[str | Path] = (), mask_dir: str | Path | None = None,
                 *, image_size: int | Sequence[int] | None = 256, max_pixels: int | None = None,
                 missing_masks: str = "error") -> None:
        _check_missing_masks(missing_masks)
        if isinstance(defect_dirs, (str, Path)):
            defect_dirs = [defect_dirs]
        folders = [(Path(good_dir), 0)] + [(Path(d), 1) for d in defect_dirs]
        resolved = [folder.resolve() for folder, _ in folders]
        if len(set(resolved)) != len(resolved):
            raise DatasetLayoutError(f"the same folder is listed twice among good_dir and defect_dirs "
                                     f"({[str(f) for f, _ in folders]}); each image needs one label")
        if mask_dir is not None and not Path(mask_dir).is_dir():
            raise DatasetLayoutError(f"mask folder {mask_dir} does not exist")
        masks = _mask_index(None if mask_dir is None else Path(mask_dir))
        samples: list[tuple[Path, int, Path | None, str]] = []
        for folder, label in folders:
            if not folder.is_dir():
                raise DatasetLayoutError(f"image folder {folder} does not exist")
            images = list_images(folder)
            if not images:
                raise DatasetLayoutError(f"image folder {folder} contains no images{_other_files(folder)}; image "
                                         f"extensions are {', '.join(IMAGE_EXTENSIONS)}")
            for path in images:
                mask = None
                if label and mask_dir is not None:
                    mask = masks.get(path.stem)
                    if mask is None and missing_masks == "error":
                        raise DatasetLayoutError(f"defect image {path} has no mask in {mask_dir} (looked for "
                                                 f"{path.stem}_mask.* and {path.stem}.*); add it, or pass "
                                                 "missing_masks='empty'")
                samples.append((path, label, mask, "good" if label == 0 else folder.name))
        super().__init__(samples, image_size, max_pixels)


def collate_items(items: list[Any]) -> Any:
    """``default_collate`` that names the files when images of different sizes meet in one batch."""
    from torch.utils.data import default_collate

    if items and all(isinstance(item, dict) and isinstance(item.get("image"), torch.Tensor) for item in items):
        shapes = {tuple(item["image"].shape) for item in items}
        if len(shapes) > 1:
            listing = ", ".join(f"{item.get('path', '?')} {tuple(item['image'].shape[-2:])}" for item in items[:4])
            raise InvalidInputError(f"images of different sizes cannot share a batch ({listing}); build the dataset "
                                    "with image_size=256 (the default) to resize them, or use batch_size=1")
    return default_collate(items)


def make_loader(dataset: Dataset, batch_size: int = 8, *, shuffle: bool = False, num_workers: int = 0,
                device: Any = None) -> DataLoader:
    """A DataLoader over a dataset whose items are dicts (paths are collated as lists).

    ``num_workers`` processes decode images in parallel (0, the default: in the calling process).
    ``device`` is where the batches will go (a resolved ``torch.device`` or a spec, see
    :mod:`adcore.devices`): for a CUDA device the batches come in pinned memory, which the detector
    copies to the GPU without blocking. On the CPU (or ``None``) nothing changes.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise InvalidInputError(f"num_workers must be a whole number >= 0, got {num_workers!r}")
    pin = False
    if device is not None:
        from adcore.devices import resolve_device

        pin = resolve_device(device).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, pin_memory=pin,
                      collate_fn=collate_items)
