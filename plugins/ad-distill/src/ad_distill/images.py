"""Images for distillation and penalties: natural-image folders, their fingerprints, augmentations.

The teacher is distilled on a user's folder of natural images (``teacher_data_dir=``) or on the
training images under random geometric and photometric augmentation; EfficientAD's penalty images
come from ``penalty_dir=`` or are made *not normal* from the training images by strong distortions
(tile shuffling, colour permutation and jitter). Fingerprints of the images enter the teacher
cache key, so a different image set never gets a stale teacher.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adcore.errors import InvalidInputError

__all__ = [
    "load_image_folder",
    "fingerprint_images",
    "augment_geometric_photometric",
    "colour_jitter_one",
    "distort_for_penalty",
    "PenaltySource",
]


def load_image_folder(folder: str | os.PathLike[str], size: tuple[int, int], *, max_images: int = 500,
                      seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Images found (recursively) under ``folder``, resized to ``size``; at most ``max_images``.

    Returns ``(images (N,3,h,w), description)``; the description names the folder, the count and a
    fingerprint of the chosen files (names, sizes, modification times) for the cache key.
    """
    from adcore.data import IMAGE_EXTENSIONS, load_image
    from adcore.inputs import resize_images

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InvalidInputError(f"image folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not p.name.startswith("."))
    if not files:
        raise InvalidInputError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if len(files) > max_images:  # a random, reproducible subset of a large folder (e.g. ImageNet)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:max_images]
        files = [files[i] for i in sorted(order.tolist())]
    hasher = hashlib.sha256()
    images = []
    for path in files:
        stat = path.stat()
        hasher.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        images.append(resize_images(load_image(path)[None], size)[0])
    description = {"kind": "folder", "path": str(root.resolve()), "images": len(files),
                   "fingerprint": hasher.hexdigest()[:16]}
    return torch.stack(images), description


def fingerprint_images(images: torch.Tensor) -> str:
    """A short sha256 of a tensor's shape and bytes (identifies a training set for the cache key)."""
    hasher = hashlib.sha256(f"{tuple(images.shape)}|{images.dtype}|".encode())
    hasher.update(images.detach().contiguous().cpu().numpy().tobytes())
    return hasher.hexdigest()[:16]


def augment_geometric_photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (70–100 % side), flips, ±15° rotation and brightness/contrast/saturation jitter.

    Used to stretch a small set of training images into distillation data: every step sees new
    crops, scales and colours, so the teacher learns the backbone's response to local image
    structure rather than memorising a few views.
    """
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:  # drawn on the CPU: the same draws on every device
        return (low + (high - low) * torch.rand(count, generator=generator)).to(images.device)

    scale = uniform(0.7, 1.0)
    angle = uniform(-math.pi / 12, math.pi / 12)
    flip_x = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0).to(images.device)
    flip_y = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0).to(images.device)
    shift_x, shift_y = (1 - scale) * uniform(-1, 1), (1 - scale) * uniform(-1, 1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip_x, -sin, shift_x], 1),
                         torch.stack([sin, cos * flip_y, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out = out * uniform(0.8, 1.2).view(-1, 1, 1, 1)  # brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * uniform(0.8, 1.2).view(-1, 1, 1, 1) + mean  # contrast
    gray = out.mean(dim=1, keepdim=True)
    out = (out - gray) * uniform(0.8, 1.2).view(-1, 1, 1, 1) + gray  # saturation
    return out.clamp(0.0, 1.0)


def colour_jitter_one(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """EfficientAD's autoencoder augmentation: one of brightness, contrast or saturation, λ ~ U(0.8, 1.2).

    One choice and one λ per batch, as in the paper's batch-size-1 training.
    """
    choice = int(torch.randint(0, 3, (1,), generator=generator))
    factor = float(0.8 + 0.4 * torch.rand(1, generator=generator))
    if choice == 0:
        out = images * factor
    elif choice == 1:
        # torchvision's adjust_contrast blends with the mean of the grayscale image
        gray = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
        out = (images - gray) * factor + gray
    else:
        gray = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]
        out = (images - gray) * factor + gray
    return out.clamp(0.0, 1.0)


def distort_for_penalty(images: torch.Tensor, generator: torch.Generator, *, tiles: int = 8) -> torch.Tensor:
    """Make *non-normal* images from normal ones: shuffled, rotated tiles and permuted, jittered colours.

    EfficientAD's penalty loss keeps the student from imitating the teacher on images outside the
    normal distribution; the paper draws them from ImageNet. Without ImageNet, shuffling a
    ``tiles×tiles`` grid (each tile rotated by a random multiple of 90°) creates edges, junctions and
    object arrangements that never occur in normal images, and a colour permutation plus strong
    jitter moves the colours off the training distribution.
    """
    count, channels, height, width = images.shape
    th, tw = max(1, height // tiles), max(1, width // tiles)
    rows, cols = height // th, width // tw
    out = images.clone()
    core = out[:, :, :rows * th, :cols * tw]
    blocks = core.reshape(count, channels, rows, th, cols, tw).permute(0, 2, 4, 1, 3, 5).reshape(count, rows * cols, channels, th, tw)
    shuffled = []
    for index in range(count):
        order = torch.randperm(rows * cols, generator=generator)
        tiles_i = blocks[index, order]
        if th == tw:
            turns = torch.randint(0, 4, (rows * cols,), generator=generator)
            tiles_i = torch.stack([torch.rot90(t, int(k), dims=(1, 2)) for t, k in zip(tiles_i, turns, strict=False)])
        shuffled.append(tiles_i)
    blocks = torch.stack(shuffled).reshape(count, rows, cols, channels, th, tw).permute(0, 3, 1, 4, 2, 5)
    out[:, :, :rows * th, :cols * tw] = blocks.reshape(count, channels, rows * th, cols * tw)
    permutation = torch.randperm(3, generator=generator)
    out = out[:, permutation]
    factor = (0.5 + torch.rand(count, 3, 1, 1, generator=generator)).to(images.device)  # per-channel gain in [0.5, 1.5)
    return (out * factor).clamp(0.0, 1.0)


class PenaltySource:
    """Endless supply of penalty batches: a user folder (random draws) or distorted training images."""

    def __init__(self, images: torch.Tensor, generator: torch.Generator, *, from_folder: bool, description: dict[str, Any]) -> None:
        self.images = images
        self.generator = generator
        self.from_folder = from_folder
        self.description = description

    @classmethod
    def create(cls, penalty_dir: str | None, training_images: torch.Tensor, size: tuple[int, int], seed: int) -> PenaltySource:
        generator = torch.Generator().manual_seed(seed + 7919)
        if penalty_dir is not None:
            images, description = load_image_folder(penalty_dir, size, seed=seed)
            return cls(images.to(training_images.device), generator, from_folder=True, description=description)
        return cls(training_images, generator, from_folder=False,
                   description={"kind": "distorted training images (tile shuffle, colour permutation/jitter)",
                                "images": int(training_images.shape[0])})

    def sample(self, count: int) -> torch.Tensor:
        index = torch.randint(0, self.images.shape[0], (count,), generator=self.generator)
        batch = self.images[index]
        if self.from_folder:
            return augment_geometric_photometric(batch, self.generator)
        return distort_for_penalty(batch, self.generator)
