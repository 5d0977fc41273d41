"""Offline teacher distillation for ad-distill: the recipe, the backbone target, the cache, teacher files.

Both detectors of this distribution need a *teacher*: a small patch network distilled from a
pretrained backbone. The papers distil on ImageNet (EfficientAD: 60k iterations from WideResNet-101;
Uninformed Students: ImageNet patches from ResNet-18) and anomalib downloads a ready teacher plus
~1.5 GB of Imagenette. Here everything happens offline:

* **Source images**: the user's own folder of natural images (``teacher_data_dir=``), or, by
  default, the detector's training images under random geometric and photometric augmentation
  (:mod:`ad_distill.images`).
* **Target**: the detector's pretrained backbone read through core's shared frozen extractor
  (:attr:`adcore.feature_detector.FeatureDetector.extractor`; EfficientNet-Lite0 with offline
  ImageNet weights by default, any timm backbone with ``checkpoint_path=``). Each chosen stage is
  averaged over its 3×3 neighbourhood (PatchCore's local aggregation, which EfficientAD's
  distillation uses too), resized to the teacher's output grid, concatenated and normalised per
  channel. A 1×1 linear decoder maps the teacher's output onto that target during distillation and
  is discarded afterwards — the knowledge-distillation set-up of Bergmann et al. (2020); it lets the
  teacher's width differ from the backbone's channel count.
* **Cache**: distilled teachers are written as safetensors (never pickle) with their provenance
  (backbone, its weights and checkpoint fingerprint, layers, source images and their fingerprint,
  epochs, steps, loss, seconds, UTC date) under ``cache_dir`` / ``$ADCORE_CACHE_DIR`` /
  ``~/.cache/adcore``; a later fit with the same recipe, target and images loads it instead of
  distilling again. A ready teacher file (``teacher_path=``, e.g. one distilled on ImageNet by the
  user) skips distillation altogether.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ad_distill.images import augment_geometric_photometric, fingerprint_images, load_image_folder
from adcore.errors import InvalidInputError, ModelFileError

if TYPE_CHECKING:
    from adcore.backbones import FeatureExtractor

__all__ = [
    "TeacherSpec",
    "TEACHER_FORMAT",
    "resolve_cache_dir",
    "fingerprint_checkpoint",
    "obtain_teacher",
    "distill_teacher",
    "save_teacher",
    "load_teacher",
    "BackboneTarget",
    "steps_to_epochs",
    "channel_statistics",
    "grid_to_image",
    "sampled_quantile",
    "ImageNetNormalize",
]

TEACHER_FORMAT = "ad-distill-teacher"
TEACHER_FORMAT_VERSION = 1


class ImageNetNormalize(nn.Module):
    """First layer of every patch network here: [0, 1] images → ImageNet-normalised (as the papers' networks expect)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


# -- teacher recipe -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherSpec:
    """Everything that determines a distilled teacher (and therefore its cache key).

    ``architecture`` names the network builder (``"pdn_small"``, ``"st_patch_33"``...),
    ``architecture_params`` its JSON arguments (channels, width). The target is identified by
    ``backbone``, ``layers`` (stage names), ``weights`` and ``checkpoint_sha256`` (the content of
    ``checkpoint_path``, so a moved file still hits and a changed one does not); ``stride`` is the
    network's output stride, used to align the backbone target with the network's output grid.
    """

    architecture: str
    architecture_params: dict[str, Any]
    backbone: str
    layers: tuple[str, ...]
    input_size: tuple[int, int]
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    weights: str | None = "pretrained"
    checkpoint_sha256: str | None = None
    stride: int = 4
    augment: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["input_size"] = list(self.input_size)
        return out


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` if given, else ``$ADCORE_CACHE_DIR``, else ``~/.cache/adcore``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ADCORE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adcore"


def fingerprint_checkpoint(path: str | os.PathLike[str]) -> str:
    """sha256 of a backbone checkpoint file's bytes (first 16 hex digits), for the teacher cache key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"backbone checkpoint {path} does not exist: checkpoint_path= must name a "
                             ".safetensors or .pth state dict of the backbone")
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()[:16]


def steps_to_epochs(steps: int, images: int, batch_size: int) -> int:
    """Epochs over ``images`` that give at least ``steps`` optimiser steps (at least one epoch)."""
    per_epoch = max(1, math.ceil(images / batch_size))
    return max(1, math.ceil(steps / per_epoch))


# -- distillation target ----------------------------------------------------------------------------
class BackboneTarget:
    """Pretrained backbone features on a network's output grid: 3×3-aggregated, resized, concatenated.

    Reads every stage ``extractor`` returns (the detector's shared frozen extractor). The stage maps
    are resized to the image's ``1/stride`` grid and centre-cropped to the teacher's (unpadded,
    hence smaller) grid, so target position ``i`` and teacher position ``i`` look at the same image
    region.
    """

    def __init__(self, extractor: FeatureExtractor, stride: int) -> None:
        self.extractor = extractor
        self.layers = list(extractor.layer_names)
        self.stride = stride
        self.channels = sum(extractor.channels[name] for name in self.layers)

    @property
    def weights_source(self) -> str:
        return str(self.extractor.weights_source)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        features = self.extractor(images)
        full = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        top, left = max(0, (full[0] - grid[0]) // 2), max(0, (full[1] - grid[1]) // 2)
        maps = []
        for name in self.layers:
            aggregated = F.avg_pool2d(features[name], 3, stride=1, padding=1, count_include_pad=False)
            resized = F.interpolate(aggregated, size=full, mode="bilinear", align_corners=False)
            maps.append(resized[:, :, top:top + grid[0], left:left + grid[1]])
        return torch.cat(maps, dim=1)


def channel_statistics(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``fn(images)`` over all images and positions (float64 sums)."""
    total = squares = None
    count = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out = fn(images[start:start + batch_size]).double()
            flat = out.transpose(0, 1).reshape(out.shape[1], -1)
            total = flat.sum(1) if total is None else total + flat.sum(1)
            squares = (flat**2).sum(1) if squares is None else squares + (flat**2).sum(1)
            count += flat.shape[1]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.float().view(1, -1, 1, 1), std.float().clamp_min(1e-6).view(1, -1, 1, 1)


def distill_teacher(network: nn.Module, images: torch.Tensor, spec: TeacherSpec,
                    extractor: FeatureExtractor) -> dict[str, Any]:
    """Train ``network`` in place to regress the normalised ``extractor`` target; returns a summary.

    Adam (weight decay 1e-5, as both papers), MSE through a 1×1 linear decoder that is discarded
    afterwards, random augmentation of every batch when ``spec.augment``.
    """
    from adcore.training import train_epochs

    target = BackboneTarget(extractor, spec.stride)
    with torch.no_grad():
        probe = network.eval()(images[:1])
    grid = (probe.shape[-2], probe.shape[-1])
    mean, std = channel_statistics(lambda batch: target(batch, grid), images)
    decoder = nn.Conv2d(probe.shape[1], target.channels, kernel_size=1).to(images.device)

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        goal = (target(batch, grid) - mean) / std
        return F.mse_loss(decoder(network(batch)), goal)

    parameters = list(network.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(parameters, lr=spec.learning_rate, weight_decay=1e-5)
    started = time.perf_counter()
    history = train_epochs(loss_fn, images, optimizer, epochs=spec.epochs, batch_size=spec.batch_size,
                           seed=spec.seed, modules=[network, decoder],
                           augment=augment_geometric_photometric if spec.augment else None, desc="distil teacher",
                           device=images.device)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return {"seconds": round(time.perf_counter() - started, 3), "final_loss": history.loss[-1],
            "first_loss": history.loss[0], "steps": spec.epochs * math.ceil(images.shape[0] / spec.batch_size),
            "backbone_weights": target.weights_source, "target_channels": target.channels}


# -- teacher files ---------------------------------------------------------------------------------
def save_teacher(path: Path, network: nn.Module, spec: TeacherSpec, provenance: dict[str, Any]) -> Path:
    """Write a teacher as safetensors with its recipe and provenance in the header (atomically)."""
    from safetensors.torch import save

    from adcore.files import atomic_write_bytes

    tensors = {k: v.detach().contiguous().clone() for k, v in network.state_dict().items()}
    metadata = {"format": TEACHER_FORMAT, "format_version": str(TEACHER_FORMAT_VERSION),
                "spec": json.dumps(spec.as_dict(), sort_keys=True), "provenance": json.dumps(provenance, sort_keys=True)}
    atomic_write_bytes(Path(path), save(tensors, metadata=metadata))
    return Path(path)


def load_teacher(path: str | os.PathLike[str], network: nn.Module, spec: TeacherSpec | None = None) -> dict[str, Any]:
    """Load a teacher file into ``network`` (checking its architecture); returns the file's provenance."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"teacher file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a teacher file"
        raise ModelFileError(f"{path} is not a safetensors teacher file ({exc}); teachers are never read from pickles") from exc
    if metadata.get("format") != TEACHER_FORMAT:
        raise ModelFileError(f"{path} is not an ad-distill teacher (format {metadata.get('format')!r}, "
                             f"expected {TEACHER_FORMAT!r})")
    stored = json.loads(metadata.get("spec", "{}"))
    if spec is not None:
        wanted = (spec.architecture, spec.architecture_params)
        found = (stored.get("architecture"), stored.get("architecture_params"))
        if json.dumps(wanted, sort_keys=True) != json.dumps(list(found), sort_keys=True):
            raise InvalidInputError(f"teacher file {path} holds architecture {found[0]} {found[1]}, but this detector "
                                    f"needs {wanted[0]} {wanted[1]}; set the detector's parameters to match or distil a new one")
    try:
        network.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"teacher file {path} does not fit the network: {exc}") from exc
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    provenance = json.loads(metadata.get("provenance", "{}"))
    provenance["spec"] = stored
    return provenance


def obtain_teacher(spec: TeacherSpec, build: Callable[[], nn.Module], training_images: torch.Tensor, *,
                   extractor: Callable[[], FeatureExtractor], teacher_path: str | os.PathLike[str] | None = None,
                   teacher_data_dir: str | os.PathLike[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None,
                   use_cache: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher for ``spec``: from ``teacher_path``, else from the cache, else freshly distilled.

    ``extractor`` returns the frozen backbone extractor of the target (the detector's shared one);
    it is called only when a teacher is distilled, so a cache hit or a ready teacher never builds
    the backbone. Distillation data are ``teacher_data_dir`` (any natural-image folder) or the training images,
    augmented. The returned provenance (JSON) says where the teacher came from; detectors store it
    beside the teacher weights in their own model file, so a saved detector never needs the cache.
    The teacher is built on the CPU (the same initial weights everywhere) and lives, and is
    distilled, on the device of ``training_images``.
    """
    device = training_images.device
    network = build().to(device)
    if teacher_path is not None:
        provenance = load_teacher(teacher_path, network, spec)
        provenance["loaded_from"] = str(Path(teacher_path).expanduser().resolve())
        return network, provenance
    if teacher_data_dir is not None:
        images, source = load_image_folder(teacher_data_dir, spec.input_size, seed=spec.seed)
        images = images.to(device)
    else:
        images = training_images
        source = {"kind": "training images" + (" (augmented)" if spec.augment else ""),
                  "images": int(images.shape[0]), "fingerprint": fingerprint_images(images)}
    key = hashlib.sha256(json.dumps({"spec": spec.as_dict(), "source": source}, sort_keys=True).encode()).hexdigest()[:20]
    cached = resolve_cache_dir(cache_dir) / "ad_distill" / "teachers" / f"{spec.architecture}-{key}.safetensors"
    if use_cache and cached.is_file():
        try:
            provenance = load_teacher(cached, network, spec)
            provenance["loaded_from"] = str(cached)
            provenance["cache_hit"] = True
            return network, provenance
        except (ModelFileError, InvalidInputError, json.JSONDecodeError):
            network = build().to(device)  # a damaged cache entry is rebuilt, not trusted
    from adcore.seeding import seeded

    with seeded(spec.seed):  # restores the caller's RNG state: a cache hit and a fresh distillation leave it alike
        summary = distill_teacher(network, images, spec, extractor())
    provenance = {"backbone": spec.backbone, "layers": list(spec.layers), "weights": spec.weights,
                  "checkpoint_sha256": spec.checkpoint_sha256, "source": source, "epochs": spec.epochs,
                  "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **summary}
    if use_cache:
        try:
            save_teacher(cached, network, spec, provenance)
            provenance["cached_at"] = str(cached)
        except OSError as exc:  # a read-only home must not break fitting; the detector keeps its teacher
            provenance["cache_error"] = f"{type(exc).__name__}: {exc}"
    provenance["cache_hit"] = False
    provenance["spec"] = spec.as_dict()
    return network, provenance


# -- maps -----------------------------------------------------------------------------------------
def grid_to_image(maps: torch.Tensor, image_size: tuple[int, int], stride: int, *, pad_mode: str = "constant") -> torch.Tensor:
    """``(B,h,w)`` maps of an unpadded stride-``stride`` network → ``(B,H,W)`` at the image size.

    The network's grid is smaller than ``image_size / stride`` by its receptive field; the map is
    padded back (centred) to that grid, which puts every value over the centre of its receptive
    field, and then bilinearly upsampled.
    """
    full = (image_size[0] // stride, image_size[1] // stride)
    top, left = max(0, (full[0] - maps.shape[-2]) // 2), max(0, (full[1] - maps.shape[-1]) // 2)
    bottom, right = max(0, full[0] - maps.shape[-2] - top), max(0, full[1] - maps.shape[-1] - left)
    x = maps[:, None]
    if top or left or bottom or right:
        x = F.pad(x, (left, right, top, bottom), mode=pad_mode) if pad_mode != "constant" else F.pad(x, (left, right, top, bottom))
    return F.interpolate(x, size=image_size, mode="bilinear", align_corners=False)[:, 0]


def sampled_quantile(values: torch.Tensor, q: float, *, limit: int = 2**24, seed: int = 0) -> float:
    """``torch.quantile`` over all values, on a seeded random subset when there are more than ``limit``."""
    flat = values.detach().flatten().float()
    if flat.numel() > limit:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:limit]]
    return float(torch.quantile(flat, q))
