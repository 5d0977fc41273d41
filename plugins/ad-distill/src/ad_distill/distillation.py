"""``DistillationDetector``: what EfficientAD and Student-Teacher share — a teacher distilled from a backbone.

Both are :class:`~adcore.feature_detector.FeatureDetector` subclasses whose ``backbone``,
``layers``, ``weights`` and ``checkpoint_path`` name the *distillation target*: the pretrained
stages a teacher is distilled from (``layers=None``: the deepest stage at strides 8 and 16,
EfficientNet-Lite0 ``blocks.2`` + ``blocks.4``, ResNet ``layer2`` + ``layer3`` as in EfficientAD's
WideResNet-101 recipe). The target is read through the detector's shared frozen extractor
(``self.extractor``), so this distribution builds no backbone of its own. After ``fit`` the
detectors use only their teacher networks; the backbone is not part of a saved model.

This class declares the parameters both detectors have (teacher budget, student budget, cache),
the renamed ones (``teacher_layers``, ``lr``, ``teacher_lr``, ``holdout_fraction``), and builds
the :class:`~ad_distill.teachers.TeacherSpec` whose hash keys the teacher cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ad_distill.teachers import TeacherSpec, fingerprint_checkpoint, obtain_teacher, steps_to_epochs
from adcore.backbones import StagePick, stages
from adcore.feature_detector import FeatureDetector
from adcore.params import Boolean, Check, ConstraintSpec, Integer, Real
from adcore.training import split_holdout

__all__ = ["DistillationDetector", "FOLDER"]

#: a folder given by path (whether it exists is checked where it is read)
FOLDER = Check(lambda value: (isinstance(value, str) and bool(value)) or isinstance(value, os.PathLike), "a folder path")


class DistillationDetector(FeatureDetector):
    """Base of the detectors here: shared parameters and the teacher plumbing (see the module docstring)."""

    default_strides: ClassVar[tuple[int, ...]] = (8, 16)
    stage_pick: ClassVar[StagePick] = "last"
    parameter_constraints: ClassVar[Mapping[str, ConstraintSpec]] = {
        "width": [Real(0.0, 4.0, closed="right")],
        "teacher_steps": [Integer(1, 10_000_000)],
        "teacher_batch_size": [Integer(1, 4096)],
        "teacher_learning_rate": [Real(0.0, 10.0, closed="right")],
        "teacher_data_dir": [FOLDER, None],
        "train_steps": [Integer(1, 10_000_000)],
        "learning_rate": [Real(0.0, 10.0, closed="right")],
        "weight_decay": [Real(0.0, 10.0)],
        "validation_fraction": [Real(0.0, 1.0, closed="left")],
        "cache_dir": [FOLDER, None],
        "use_cache": [Boolean()],
        # the detectors draw their augmentations and splits from generators seeded with it: no None
        "seed": [Integer(0, 2**63 - 1)],
    }
    parameter_aliases: ClassVar[Mapping[str, Any]] = {
        "teacher_layers": "layers",
        "lr": "learning_rate",
        "teacher_lr": "teacher_learning_rate",
        "holdout_fraction": "validation_fraction",
    }

    teacher_steps: int
    teacher_batch_size: int
    teacher_learning_rate: float
    teacher_data_dir: str | os.PathLike[str] | None
    validation_fraction: float
    cache_dir: str | os.PathLike[str] | None
    use_cache: bool

    def _split_validation(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images and the held-out normal images the maps are normalised on (all of them if too few)."""
        train, held = split_holdout(images, float(self.validation_fraction), self.seed)
        return train, (held if held.shape[0] else train)

    def _target_layers(self) -> tuple[str, ...]:
        """The target's stages by name (indices resolved), so ``layers=None`` and the same names share a cache entry."""
        names = [stage.name for stage in stages(self.backbone)]
        return tuple(names[layer] if isinstance(layer, int) and 0 <= layer < len(names) else str(layer)
                     for layer in self.resolved_layers())

    def _teacher_spec(self, architecture: str, architecture_params: dict[str, Any], count: int) -> TeacherSpec:
        batch = min(int(self.teacher_batch_size), count)
        checkpoint = None if self.checkpoint_path is None else fingerprint_checkpoint(self.checkpoint_path)
        return TeacherSpec(architecture=architecture, architecture_params=architecture_params,
                           backbone=self.backbone, layers=self._target_layers(), input_size=self.image_size,
                           epochs=steps_to_epochs(int(self.teacher_steps), count, batch), batch_size=batch,
                           learning_rate=float(self.teacher_learning_rate), seed=int(self.seed),
                           weights=self.weights, checkpoint_sha256=checkpoint)

    def _obtain_teacher(self, spec: TeacherSpec, build: Callable[[], nn.Module], images: torch.Tensor,
                        teacher_path: str | os.PathLike[str] | None) -> tuple[nn.Module, dict[str, Any]]:
        return obtain_teacher(spec, build, images, extractor=lambda: self.extractor, teacher_path=teacher_path,
                              teacher_data_dir=self.teacher_data_dir, cache_dir=self.cache_dir,
                              use_cache=bool(self.use_cache))
