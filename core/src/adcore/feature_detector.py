"""``FeatureDetector``: the base of every detector that reads a pretrained timm backbone.

It owns the four backbone parameters every such detector has, under one name each —
``backbone``, ``layers``, ``weights``, ``checkpoint_path`` — and the one lazy, shared, frozen
extractor (:func:`adcore.backbones.shared_extractor`), so a detector never builds or caches an
extractor itself. ``layers=None`` means the paper's stages: the stage at each of the class's
``default_strides``, the ``first`` or ``last`` one per stride as ``stage_pick`` says, so the same
rule picks ResNet ``layer2``/``layer3`` and EfficientNet-Lite0 ``blocks.2``/``blocks.4``.

A subclass lists the four parameters in its own ``__init__`` (scikit-learn convention: explicit
parameters, stored unchanged), sets ``default_strides``/``stage_pick``, and reads features with
``self.extractor(images)``. A detector that needs more stages than ``layers`` (SPADE's global
feature, a perceptual error) overrides :meth:`extractor_layers`; one that trains a network of the
backbone's shape (STFPM's student, a fine-tuned encoder) gets it from :meth:`build_extractor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from adcore.backbones import FeatureExtractor, StagePick, select_stages, shared_extractor
from adcore.base import BaseDetector
from adcore.params import ConstraintSpec, FilePath, Options, Stages, Text

__all__ = ["FeatureDetector"]


class FeatureDetector(BaseDetector):
    """Base class for detectors on a pretrained backbone (see the module docstring)."""

    #: strides of the stages ``layers=None`` stands for (ResNet layer2/layer3 are strides 8/16)
    default_strides: ClassVar[tuple[int, ...]] = (8, 16)
    #: at a stride shared by several stages, take the ``first`` or the ``last`` (deepest) one
    stage_pick: ClassVar[StagePick] = "last"
    parameter_constraints: ClassVar[Mapping[str, ConstraintSpec]] = {
        "backbone": [Text()],
        "layers": [Stages(), None],
        "weights": [Options("pretrained", "hub"), None],
        "checkpoint_path": [FilePath(), None],
    }

    backbone: str
    layers: Sequence[str | int] | None
    weights: str | None
    checkpoint_path: Any

    def resolved_layers(self) -> tuple[str | int, ...]:
        """``layers`` as given, or the backbone's stages at ``default_strides``."""
        if self.layers is not None:
            return tuple(self.layers)
        return select_stages(self.backbone, self.default_strides, self.stage_pick)

    def extractor_layers(self) -> tuple[str | int, ...]:
        """Every stage the shared extractor returns (default: :meth:`resolved_layers`)."""
        return self.resolved_layers()

    @property
    def extractor(self) -> FeatureExtractor:
        """The shared frozen extractor for the current parameters, on ``device_`` at ``precision``
        (built on first use, never saved)."""
        key = (self.backbone, self.extractor_layers(), self.weights,
               None if self.checkpoint_path is None else str(self.checkpoint_path), self.device_,
               getattr(self, "precision", "32"))
        if getattr(self, "_extractor_key", None) != key:
            self._extractor = shared_extractor(key[0], key[1], weights=key[2], checkpoint_path=key[3], device=key[4],
                                               precision=key[5])
            self._extractor_key = key
        return self._extractor

    def build_extractor(self, layers: Sequence[str | int] | None = None, *, pretrained: bool = True,
                        trainable: bool = False) -> FeatureExtractor:
        """A new extractor of this backbone (not shared), on ``device_``: ``pretrained=False`` for random
        initialisation drawn from the current (seeded) random stream (on the CPU, so every device starts
        from the same weights), ``trainable=True`` to train it. It runs at float32: a trained network
        gets its precision from the training loop's autocast."""
        return FeatureExtractor(self.backbone, list(layers if layers is not None else self.resolved_layers()),
                                weights=self.weights if pretrained else None,
                                checkpoint_path=self.checkpoint_path if pretrained else None,
                                trainable=trainable).to(self.device_)
