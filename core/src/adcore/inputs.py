"""Turning what callers pass into what detectors use: validated ``(B,3,h,w)`` float tensors.

``validate_images`` is the single gate for ``predict``; :class:`ImageStream` is the re-iterable
view over ``fit`` data (DataLoaders, tensors, datasets, generators) that streams batches instead of
loading a whole training set into memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from adcore.errors import InvalidInputError

__all__ = ["validate_images", "as_float_images", "resize_images", "extract_images", "ImageStream", "DeviceStream", "to_size"]

_RANGE_TOLERANCE = 1e-3


def to_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``256`` or ``(h, w)`` → ``(h, w)``, rejecting nonsense with the allowed form."""
    if isinstance(size, bool):
        raise InvalidInputError(f"input_size must be an int or (height, width), got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InvalidInputError(f"input_size must be an int or (height, width), got {size!r}") from None
    if h < 16 or w < 16 or h > 4096 or w > 4096:
        raise InvalidInputError(f"input_size must be between 16 and 4096 pixels per side, got {(h, w)}")
    return (h, w)


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images divided by 255 (one float copy, divided in place); float ones as they are."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def validate_images(images: Any, *, where: str = "predict", tiling: bool = False) -> torch.Tensor:
    """Check a batch and return it as contiguous float32 ``(B,3,H,W)`` in [0, 1].

    Conversions (documented, tested): ``uint8`` is divided by 255; other float dtypes are cast to
    float32. Everything else that is off raises :class:`InvalidInputError` saying what was expected.
    A float32 batch that is already contiguous and in [0, 1] is returned as it is, not copied (an
    8,000² image is 732 MB; a tiling prediction would otherwise hold it twice), so predictors must
    not write into the batch they get. ``tiling``: for a caller that cuts the batch into tiles and
    copies each batch of tiles itself: a ``uint8`` batch is returned checked but as it is (the tiles
    are converted one batch at a time) and no batch is made contiguous (``load_image`` gives a
    channels-last float image; its contiguous copy would be another full-size buffer).
    """
    if not isinstance(images, torch.Tensor):
        hint = " (a numpy array: use torch.from_numpy(a).permute(0, 3, 1, 2) / 255)" if hasattr(images, "__array__") else ""
        raise InvalidInputError(f"{where}: expected a torch.Tensor of shape (B,3,H,W), got {type(images).__name__}{hint}")
    if not (images.dtype == torch.uint8 or images.is_floating_point()):
        raise InvalidInputError(f"{where}: expected float32 images in [0, 1] (or uint8 in [0, 255]), got dtype {images.dtype}")
    if images.ndim == 3 and images.shape[0] in (1, 3, 4):
        raise InvalidInputError(f"{where}: got one image of shape {tuple(images.shape)}; add the batch dimension: images.unsqueeze(0)")
    if images.ndim != 4:
        raise InvalidInputError(f"{where}: expected shape (B,3,H,W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InvalidInputError(f"{where}: the batch is empty (shape {tuple(images.shape)}); pass at least one image")
    channels = images.shape[1]
    if channels != 3:
        fix = ("repeat the gray channel: images.expand(-1, 3, -1, -1)" if channels == 1 else
               "drop alpha: images[:, :3]" if channels == 4 else
               "images must be channels-first (B,3,H,W)")
        raise InvalidInputError(f"{where}: expected 3 RGB channels, got {channels} (shape {tuple(images.shape)}); {fix}. "
                                "adcore's datasets convert grayscale/RGBA files to RGB for you.")
    if images.shape[2] < 2 or images.shape[3] < 2:
        raise InvalidInputError(f"{where}: images of {images.shape[2]}×{images.shape[3]} pixels are too small to score")
    if images.dtype == torch.uint8:
        # every uint8 value is in range; dividing in place keeps one float copy, not two
        return images if tiling else as_float_images(images).contiguous()
    # min and max in one reduction, no mask of the whole batch: NaN propagates through both and an
    # Inf is one of them, so the per-image finiteness mask is only built to name the bad images
    low_t, high_t = torch.aminmax(images)
    low, high = float(low_t), float(high_t)
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = (~torch.isfinite(images)).flatten(1).any(1).nonzero().flatten().tolist()
        raise InvalidInputError(f"{where}: images {bad[:10]} of the batch contain NaN or Inf values")
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        hint = ("divide by 255" if high > 1.5 else
                "pass raw images: detectors apply their backbone's normalisation themselves")
        raise InvalidInputError(f"{where}: pixel values must be in [0, 1], got min {low:.3g}, max {high:.3g}; {hint}")
    converted = images.float()
    if low < 0.0 or high > 1.0:  # within the tolerance: clamp a copy, never the caller's tensor
        converted = converted.clamp(0.0, 1.0) if converted is images else converted.clamp_(0.0, 1.0)
    return converted if tiling else converted.contiguous()


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a float batch to ``size`` (antialiased when shrinking, so no aliasing artefacts)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def extract_images(item: Any) -> torch.Tensor:
    """The image tensor of one item of fit/calibration data: a tensor, ``(img, label, ...)`` or ``{"image": ...}``."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, dict):
        if "image" not in item:
            raise InvalidInputError(f"a data item is a dict without an 'image' key (keys: {sorted(item)})")
        return item["image"]
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    raise InvalidInputError(f"cannot find images in a data item of type {type(item).__name__}; yield (B,3,H,W) "
                            "tensors, (images, labels) tuples or {'image': images} dicts")


def extract_labels(item: Any) -> torch.Tensor | None:
    """Image-level labels of one item when present (``(img, label)`` or ``{"label": ...}``)."""
    if isinstance(item, dict):
        label = item.get("label")
    elif isinstance(item, (tuple, list)) and len(item) > 1:
        label = item[1]
    else:
        return None
    return None if label is None else torch.as_tensor(label).reshape(-1).long()


class ImageStream:
    """A re-iterable stream of validated, resized batches over fit data.

    Accepts a DataLoader, a ``(N,3,H,W)`` tensor, a map-style dataset of single images, or any
    iterable of batches. A one-shot iterator (e.g. a generator) is cached on its first pass so
    that multi-epoch training can iterate again; everything else is re-read each pass, so a
    dataset larger than memory is never loaded at once. Items of a map-style dataset may have
    different sizes: each is resized to ``size`` before batching. ``size=None`` keeps every image at
    its own size (for tiling); a map-style dataset is then read one image per batch, since images
    of different sizes cannot share a batch. A batch that fails validation
    is reported with its index and, when the items carry them, the files it came from.
    """

    def __init__(self, data: Any, size: tuple[int, int] | None, *, batch_size: int = 8, where: str = "fit") -> None:
        import os

        if data is None:
            raise InvalidInputError(f"{where}: no data given; pass a DataLoader or an iterable of (B,3,H,W) tensors")
        if isinstance(data, (str, bytes, os.PathLike)):
            raise InvalidInputError(f"{where}: got the path {data!r}, but {where}() takes images. Build a dataset first: "
                                    "adcore.data.FolderDataset(path) or adcore.data.MVTecDataset(root, category)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
        self.size = size
        self.where = where
        self.batch_size = batch_size
        self._data_rng: torch.Tensor | None = None
        self._cache: list[torch.Tensor] | None = None
        if isinstance(data, torch.Tensor):
            images = data if data.ndim == 4 else data.unsqueeze(0)
            self._source: Iterable[Any] = [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
        elif _is_map_dataset(data):
            from torch.utils.data import DataLoader

            self._source = DataLoader(data, batch_size=batch_size if size is not None else 1, shuffle=False,
                                      collate_fn=_ResizingCollate(size, where))
        else:
            try:
                one_shot = self._off_the_detector_rng(lambda: iter(data) is data)
            except TypeError:
                raise InvalidInputError(f"{where}: expected a DataLoader, a (N,3,H,W) tensor, a dataset or an iterable "
                                        f"of (B,3,H,W) batches, got {type(data).__name__}") from None
            self._source = data
            if one_shot:
                self._cache = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch, _ in self._batches(with_labels=False):
            yield batch

    def with_labels(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(batch, labels)`` pairs; ``labels`` is a ``(B,)`` long tensor when the items carry them
        (``(images, labels)`` tuples or ``{"label": ...}`` dicts), else ``None``. For calibration."""
        yield from self._batches(with_labels=True)

    def _batches(self, *, with_labels: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if self._cache is not None and self._source is None:
            for batch in self._cache:
                yield batch, None
            return
        count = 0
        from adcore.progress import progress

        total = len(self._source) if hasattr(self._source, "__len__") else None
        items = self._off_the_detector_rng(lambda: iter(progress(self._source, desc=self.where, total=total)))
        index = -1
        while True:
            try:
                item = self._off_the_detector_rng(lambda: next(items))
            except StopIteration:
                break
            index += 1
            batch = extract_images(item)
            if isinstance(batch, torch.Tensor) and batch.ndim == 3:
                batch = batch.unsqueeze(0)
            try:
                batch = validate_images(batch, where=self.where)
                labels = _labels_of(item, batch.shape[0], self.where) if with_labels else None
            except InvalidInputError as exc:
                raise InvalidInputError(f"{exc} (in batch {index}{_files_of(item)})") from None
            if self.size is not None:
                batch = resize_images(batch, self.size)
            count += batch.shape[0]
            if self._cache is not None:
                self._cache.append(batch)
            yield batch, labels
        if self._cache is not None:
            self._source = None  # type: ignore[assignment]
        if count == 0:
            raise InvalidInputError(f"{self.where}: the data yielded no images; check the dataset folder or loader")

    def _off_the_detector_rng(self, read: Any) -> Any:
        """Call ``read()`` (reading the caller's data) on a random stream of its own.

        A DataLoader draws its base seed from torch's global generator each time it is iterated (a
        shuffling one its order too); a dataset may draw augmentations from it. Left there, those
        draws would shift the initial weights a detector draws next, so the same images given as a
        DataLoader or as a list of tensors would train different models. The data keeps a stream of
        its own (continuing where it left off, starting from the state at the first read); the
        detector's generator is put back exactly as it was.
        """
        detector_state = torch.get_rng_state()
        if self._data_rng is not None:
            torch.set_rng_state(self._data_rng)
        try:
            return read()
        finally:
            self._data_rng = torch.get_rng_state()
            torch.set_rng_state(detector_state)

    def materialize(self) -> torch.Tensor:
        """All images as one ``(N,3,h,w)`` tensor (for detectors that train for several epochs)."""
        return torch.cat(list(self), dim=0)

    def num_images(self) -> int:
        return sum(batch.shape[0] for batch in self)


def _labels_of(item: Any, count: int, where: str) -> torch.Tensor | None:
    try:
        labels = extract_labels(item)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"{where}: the labels of a data item are not numbers 0/1 ({exc})") from None
    if labels is not None and labels.numel() != count:
        raise InvalidInputError(f"{where}: {labels.numel()} labels for {count} images")
    return labels


def _files_of(item: Any) -> str:
    paths = item.get("path") if isinstance(item, dict) else None
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, (list, tuple)) or not paths:
        return ""
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return f", files {', '.join(map(str, paths[:3]))}{more}"


def _is_map_dataset(data: Any) -> bool:
    from torch.utils.data import DataLoader, Dataset

    return isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__getitem__") and hasattr(data, "__len__")


class _ResizingCollate:
    """Batch single-image items of any size: validate and resize each image to ``size`` first."""

    def __init__(self, size: tuple[int, int] | None, where: str) -> None:
        self.size = size
        self.where = where

    def __call__(self, items: list[Any]) -> Any:
        from torch.utils.data import default_collate

        return default_collate([self._resize(item) for item in items])

    def _resize(self, item: Any) -> Any:
        image = extract_images(item)
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            return item  # not a single image: leave it to validate_images in ImageStream.__iter__
        try:
            image = validate_images(image.unsqueeze(0), where=self.where)
        except InvalidInputError as exc:
            origin = _files_of(item).lstrip(", ")
            raise InvalidInputError(f"{exc} ({origin or 'one dataset item'})") from None
        if self.size is None:
            image = image[0]
        else:
            image = resize_images(image, self.size)[0]
        if isinstance(item, dict):
            resized = {**item, "image": image}
            mask = item.get("mask")
            if self.size is not None and isinstance(mask, torch.Tensor) and mask.ndim == 2 and tuple(mask.shape) != self.size:
                resized["mask"] = F.interpolate(mask[None, None].float(), size=self.size, mode="nearest")[0, 0]
            return resized
        if isinstance(item, (tuple, list)):
            return (image, *item[1:])
        return image


class DeviceStream:
    """A fit stream whose batches (and ``materialize()``) arrive on ``device``; labels stay on the CPU.

    ``BaseDetector.fit`` wraps its stream in one when the detector runs off the CPU, so ``_fit``
    sees its images where it computes. A pinned CPU batch (``make_loader(pin_memory=True)``) is
    copied without blocking.
    """

    def __init__(self, stream: Any, device: torch.device) -> None:
        self.stream = stream
        self.device = device

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.stream:
            yield batch.to(self.device, non_blocking=True)

    def with_labels(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for batch, labels in self.stream.with_labels():
            yield batch.to(self.device, non_blocking=True), labels

    def materialize(self) -> torch.Tensor:
        return self.stream.materialize().to(self.device)

    def num_images(self) -> int:
        return self.stream.num_images()

    def __getattr__(self, name: str) -> Any:  # the wrapped stream's other attributes (size, where, batch_size)
        if name == "stream":
            raise AttributeError(name)
        return getattr(self.stream, name)
