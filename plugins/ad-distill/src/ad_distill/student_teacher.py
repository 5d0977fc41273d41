"""Student-Teacher anomaly detection — Bergmann, Fauser, Sattlegger, Steger, "Uninformed Students:
Student-Teacher Anomaly Detection with Discriminative Latent Embeddings", CVPR 2020.

For each receptive field ``p`` (17, 33, 65 in the paper) a descriptor *teacher* — a patch network
mapping every ``p×p`` patch to a ``d``-dimensional descriptor (``d = 128``) — is distilled from a
pretrained network and frozen. An ensemble of ``M`` *students* of the same architecture, randomly
initialised, learns to regress the teacher's descriptors (normalised by their mean and standard
deviation over the training images) on normal images. At test time, per pixel and per scale:

* regression error ``e = ||mean_m(s_m) − t||²`` (ensemble mean against the teacher);
* predictive variance ``v = mean_m ||s_m||² − ||mean_m(s_m)||²`` (disagreement of the students);
* score ``(e − ē)/σ_e + (v − v̄)/σ_v``, both normalised with statistics of held-out normal images;
* several scales: the scores are averaged. The image score is the maximum of the map.

Deliberate deviations from the paper:

* Teacher distillation is offline (see :mod:`ad_distill.teachers`): from the detector's
  ``backbone`` read through core's shared extractor, by default EfficientNet-Lite0 (``layers=None``:
  stages ``blocks.2`` + ``blocks.4``, instead of ResNet-18's 512-d features; another timm backbone
  offline with ``checkpoint_path=``) on the training images under augmentation or any folder
  (``teacher_data_dir``), not ImageNet. Like the paper, a linear decoder maps teacher descriptors onto the pretrained
  features (knowledge-distillation loss); the metric-learning and descriptor-compactness losses
  (the paper's λ_m, λ_c) are not used.
* Dense evaluation: the paper evaluates its patch networks at every pixel (stride 1) by
  multi-pooling unwarping. Here the networks run fully convolutionally at output stride 4 (two
  2×2 max-pools, no padding, so each output is exactly the patch network applied to one ``p×p``
  patch), i.e. the descriptor of every 4th pixel, and the score maps are bilinearly upsampled to the
  image. That is 16× cheaper and is the "fast dense implementation" we chose.
* Network layout: our own unpadded designs with exactly the paper's receptive fields (17/33/65)
  and LeakyReLU(5e-3); hidden widths 128/256 scaled by ``width``.
* Students regress whole training images densely (all positions at once) for ``train_steps``
  Adam steps (lr 1e-4, weight decay 1e-5, as the paper) instead of sampled patches.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ad_distill.distillation import DistillationDetector
from ad_distill.teachers import ImageNetNormalize, channel_statistics, grid_to_image, steps_to_epochs
from adcore.errors import InvalidInputError
from adcore.inputs import ImageStream
from adcore.params import Check, ConstraintSpec, FilePath, Integer
from adcore.training import train_epochs, training_images

__all__ = ["StudentTeacher", "DescriptorNet", "descriptor_output_size", "RECEPTIVE_FIELDS"]

RECEPTIVE_FIELDS = (17, 33, 65)
# kernels after the two 2×2 max-pools: receptive field 13 there, each k×k kernel adds 4·(k−1)
_TAIL_KERNELS = {17: (2,), 33: (3, 4), 65: (5, 5, 6)}


def _receptive_fields_ok(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0 \
        and all(isinstance(p, numbers.Integral) and not isinstance(p, bool) and p in RECEPTIVE_FIELDS for p in value) \
        and len(set(value)) == len(value)


def _file_paths_ok(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0 \
        and all(FilePath().accepts(path) for path in value)


class StudentTeacher(DistillationDetector):
    """Uninformed Students with an ensemble of ``num_students`` per receptive field (see module docstring).

    Args:
        receptive_fields: patch sizes of the scales, distinct values from ``RECEPTIVE_FIELDS`` (17, 33, 65).
        descriptor_dim: descriptor channels of teacher and students (paper: 128).
        width: scale of the patch networks' hidden channels (1.0 = 128/256).
        num_students: students per scale (at least 2: the predictive variance needs an ensemble).
        backbone: timm backbone the teachers are distilled from (the distillation target).
        layers: its stages the teachers regress; ``None``: the deepest stage at strides 8 and 16
            (EfficientNet-Lite0 ``blocks.2`` + ``blocks.4``, ResNet ``layer2`` + ``layer3``). Was ``teacher_layers``.
        weights: ``"pretrained"`` (offline provider), ``"hub"`` (timm's hub, downloads) or ``None`` (random).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict of the backbone; overrides ``weights``
            (the offline way to distil from any timm backbone).
        teacher_steps: distillation optimiser steps per teacher (rounded up to whole epochs).
        teacher_batch_size: images per distillation step.
        teacher_learning_rate: Adam learning rate of the distillation (was ``teacher_lr``).
        teacher_path: ready teacher files, one per receptive field (a single path for one scale).
        teacher_data_dir: a folder of natural images to distil on (default: the training images, augmented).
        train_steps: student optimiser steps per scale, rounded up to whole epochs.
        batch_size: images per student step.
        learning_rate: Adam learning rate of the students (was ``lr``).
        weight_decay: Adam weight decay.
        validation_fraction: share of the training images held out for the score statistics (was ``holdout_fraction``).
        cache_dir: teacher cache folder (default ``$ADCORE_CACHE_DIR`` or ``~/.cache/adcore``).
        use_cache: read and write the teacher cache.
        input_size: image side (or ``(height, width)``); must leave each receptive field a grid of at least 2×2.
        seed: seed of initialisation, augmentation and the held-out split.
    """

    parameter_constraints: ClassVar[Mapping[str, ConstraintSpec]] = {
        "receptive_fields": [Check(_receptive_fields_ok,
                                   f"a non-empty sequence of distinct receptive fields from {RECEPTIVE_FIELDS}")],
        "descriptor_dim": [Integer(1, 4096)],
        "num_students": [Integer(2, 1024)],
        "teacher_path": [FilePath(), Check(_file_paths_ok, "a sequence of file paths (one per receptive field)"), None],
    }

    def __init__(self, *, receptive_fields: Sequence[int] = RECEPTIVE_FIELDS, descriptor_dim: int = 128,
                 width: float = 1.0, num_students: int = 3, backbone: str = "tf_efficientnet_lite0",
                 layers: Sequence[str | int] | None = None, weights: str | None = "pretrained",
                 checkpoint_path: str | os.PathLike[str] | None = None, teacher_steps: int = 10_000,
                 teacher_batch_size: int = 16, teacher_learning_rate: float = 1e-4,
                 teacher_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                 teacher_data_dir: str | os.PathLike[str] | None = None, train_steps: int = 5_000,
                 batch_size: int = 4, learning_rate: float = 1e-4, weight_decay: float = 1e-5,
                 validation_fraction: float = 0.1, cache_dir: str | os.PathLike[str] | None = None,
                 use_cache: bool = True, input_size: int | tuple[int, int] = 256, seed: int = 0) -> None:
        self.receptive_fields = receptive_fields
        self.descriptor_dim = descriptor_dim
        self.width = width
        self.num_students = num_students
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.teacher_steps = teacher_steps
        self.teacher_batch_size = teacher_batch_size
        self.teacher_learning_rate = teacher_learning_rate
        self.teacher_path = teacher_path
        self.teacher_data_dir = teacher_data_dir
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.input_size = input_size
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()  # then the checks that involve several parameters
        fields = self.receptive_fields
        for p in fields:
            grid = descriptor_output_size(p, self.image_size)
            if min(grid) < 2:
                smallest = next(n for n in range(16, 4097) if descriptor_output_size(p, (n, n))[0] >= 2)
                raise InvalidInputError(f"input_size {self.image_size} is too small for receptive field {p}: "
                                        f"use at least {smallest} pixels per side")
        paths = self._teacher_paths()
        if paths is not None and len(paths) != len(fields):
            raise InvalidInputError(f"teacher_path needs one file per receptive field {tuple(fields)}, got {len(paths)}")

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        images = training_images(stream)  # canonical order: the stream's order and batching do not matter
        train, held = self._split_validation(images)
        paths = self._teacher_paths() or (None,) * len(self.receptive_fields)
        teachers, provenance, means, stds = [], [], [], []
        for p, path in zip(self.receptive_fields, paths, strict=False):
            spec = self._teacher_spec(f"st_patch_{p}", {"out_channels": int(self.descriptor_dim),
                                                        "width": float(self.width)}, images.shape[0])
            teacher, origin = self._obtain_teacher(spec, lambda p=p: self._new_network(p), images, path)
            mean, std = channel_statistics(teacher, train)  # paper: teacher descriptors normalised over the training set
            teachers.append(teacher)
            provenance.append(origin)
            means.append(mean.flatten())
            stds.append(std.flatten())
        self.teachers_ = nn.ModuleList(teachers)
        self.teacher_provenance_ = provenance
        self.descriptor_mean_ = torch.stack(means)
        self.descriptor_std_ = torch.stack(stds)
        self._build_students()
        self.training_summary_ = [self._train_scale(index, train) for index in range(len(self.receptive_fields))]
        self._set_statistics(held)

    def _train_scale(self, index: int, train: torch.Tensor) -> dict[str, Any]:
        students = self.students_[index]

        def loss_fn(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = self._teacher_descriptors(index, batch)
            # every student regresses the same target; their mean loss trains them independently
            return torch.stack([F.mse_loss(student(batch), target) for student in students]).mean()

        epochs = steps_to_epochs(int(self.train_steps), train.shape[0], int(self.batch_size))
        optimizer = torch.optim.Adam(students.parameters(), lr=float(self.learning_rate), weight_decay=float(self.weight_decay))
        history = train_epochs(loss_fn, train, optimizer, epochs=epochs, batch_size=int(self.batch_size),
                               seed=self.seed + index, modules=[students],
                               desc=f"students p={self.receptive_fields[index]}", device=self.device_,
                               precision=self.precision)
        return {"receptive_field": self.receptive_fields[index], "epochs": epochs,
                "steps": epochs * math.ceil(train.shape[0] / int(self.batch_size)),
                "first_loss": history.loss[0], "final_loss": history.loss[-1]}

    def _set_statistics(self, held: torch.Tensor) -> None:
        """Mean and std of ``e`` and ``v`` per scale over the held-out images' positions."""
        rows = []
        with torch.no_grad():
            for index in range(len(self.receptive_fields)):
                errors, variances = [], []
                for start in range(0, held.shape[0], 8):
                    e, v = self._error_and_variance(index, held[start:start + 8])
                    errors.append(e.flatten())
                    variances.append(v.flatten())
                e, v = torch.cat(errors).double(), torch.cat(variances).double()
                rows.append(torch.stack([e.mean(), e.std().clamp_min(1e-12), v.mean(), v.std().clamp_min(1e-12)]).float())
        self.score_statistics_ = torch.stack(rows)

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = None
        for index in range(len(self.receptive_fields)):
            e, v = self._error_and_variance(index, images)
            e_mean, e_std, v_mean, v_std = self.score_statistics_[index]
            score = (e - e_mean) / e_std + (v - v_mean) / v_std
            # replicate padding: positions without a full patch inherit the nearest scored one
            score = grid_to_image(score, self.image_size, 4, pad_mode="replicate")
            total = score if total is None else total + score
        maps = total / len(self.receptive_fields)
        return maps.flatten(1).amax(1), maps

    # -- helpers --------------------------------------------------------------------------------
    def _error_and_variance(self, index: int, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = self._teacher_descriptors(index, images)
        predictions = torch.stack([student(images) for student in self.students_[index]])  # (M,B,d,h,w)
        mean = predictions.mean(0)
        error = ((mean - target) ** 2).sum(1)
        variance = (predictions.pow(2).sum(2).mean(0) - mean.pow(2).sum(1)).clamp_min(0.0)
        return error, variance

    def _teacher_descriptors(self, index: int, images: torch.Tensor) -> torch.Tensor:
        mean = self.descriptor_mean_[index].view(1, -1, 1, 1)
        std = self.descriptor_std_[index].view(1, -1, 1, 1)
        return (self.teachers_[index](images) - mean) / std

    def _teacher_paths(self) -> tuple[str | os.PathLike[str], ...] | None:
        if self.teacher_path is None:
            return None
        if isinstance(self.teacher_path, (str, os.PathLike)):
            return (self.teacher_path,)
        return tuple(self.teacher_path)

    def _new_network(self, receptive_field: int) -> DescriptorNet:
        return DescriptorNet(receptive_field, int(self.descriptor_dim), float(self.width))

    def _build_students(self) -> None:
        self.students_ = nn.ModuleList(  # drawn on the CPU, trained on device_
            nn.ModuleList(self._new_network(p) for _ in range(int(self.num_students))) for p in self.receptive_fields
        ).to(self.device_)

    def _build_modules(self) -> None:
        self.teachers_ = nn.ModuleList(self._new_network(p) for p in self.receptive_fields)
        self._build_students()


def descriptor_output_size(receptive_field: int, size: tuple[int, int]) -> tuple[int, int]:
    """Output grid of :class:`DescriptorNet` for an image of ``size`` (unpadded, stride 4)."""
    def side(n: int) -> int:
        n = (n - 3) // 2  # conv 4×4, max-pool 2/2
        n = (n - 3) // 2  # conv 4×4, max-pool 2/2
        return n - sum(k - 1 for k in _TAIL_KERNELS[receptive_field])
    return side(size[0]), side(size[1])


class DescriptorNet(nn.Module):
    """Patch network with receptive field 17, 33 or 65 px and output stride 4, ``out_channels`` descriptors.

    Layout: conv 4×4 → max-pool 2 → conv 4×4 → max-pool 2 → tail convs (17: 2×2; 33: 3×3, 4×4;
    65: 5×5, 5×5, 6×6) → 1×1 descriptor head; LeakyReLU(5e-3) as in the paper; no padding, so every
    output is the network applied to exactly one patch.
    """

    def __init__(self, receptive_field: int, out_channels: int, width: float = 1.0) -> None:
        super().__init__()
        if receptive_field not in _TAIL_KERNELS:
            raise InvalidInputError(f"receptive_field must be one of {RECEPTIVE_FIELDS}, got {receptive_field}")
        a, b = max(1, round(128 * width)), max(1, round(256 * width))
        layers: list[nn.Module] = [nn.Conv2d(3, a, 4), nn.LeakyReLU(5e-3), nn.MaxPool2d(2, 2),
                                   nn.Conv2d(a, b, 4), nn.LeakyReLU(5e-3), nn.MaxPool2d(2, 2)]
        for kernel in _TAIL_KERNELS[receptive_field]:
            layers += [nn.Conv2d(b, b, kernel), nn.LeakyReLU(5e-3)]
        layers.append(nn.Conv2d(b, out_channels, 1))
        self.layers = nn.Sequential(*layers)
        self.normalize = ImageNetNormalize()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(images))
