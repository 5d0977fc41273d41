"""STFPM: Wang et al., "Student-Teacher Feature Pyramid Matching for Anomaly Detection", BMVC 2021.

A student network with the teacher's architecture, randomly initialised, learns to reproduce the
frozen pretrained teacher's feature pyramid on good images only. Where a test image differs from
what the student saw, the two pyramids disagree.

As in the paper:
- teacher: the pretrained backbone, frozen (the shared ``self.extractor``); student: the same
  architecture from scratch (``self.build_extractor(pretrained=False, trainable=True)``); three
  levels (strides 4/8/16; ResNet layer1–3, for EfficientNet-Lite0 ``blocks.1``/``blocks.2``/``blocks.4``);
- both features are L2-normalised along channels; the level loss is the mean over positions of
  ½‖t̂ − ŝ‖², and the loss sums the levels (all weights α_l = 1);
- SGD with learning rate 0.4, momentum 0.9, weight decay 1e-4, batch size 32, 100 epochs, no data
  augmentation;
- the anomaly map is the product of the per-level maps ½‖t̂ − ŝ‖² upsampled bilinearly to the
  input size (``map_combination="sum"`` adds them instead); the image score is the map's maximum.

Deliberate deviations:
- The batch loss *sums* the per-image losses, as the authors' code does (``MSELoss(reduction="sum")``
  scaled by ½/(h·w)); the paper's learning rate of 0.4 belongs to that scaling. It is computed as
  that sum divided by ``batch_size`` with SGD's learning rate multiplied and weight decay divided by
  ``batch_size``, which gives exactly the same updates but logs a per-image loss.
- The frozen teacher's normalised features of the training images are computed once and cached
  (no augmentation, so each epoch would recompute the same tensors); this removes a quarter of the
  work per epoch at the cost of memory about the size of the training images themselves.
- Optional early stopping on a held-out fraction of the good images (``validation_fraction``,
  ``patience``) restores the student weights with the lowest validation loss; off by default, as in
  the paper, which trains a fixed number of epochs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from adcore.feature_detector import FeatureDetector
from adcore.inputs import ImageStream
from adcore.ops import upsample
from adcore.params import Integer, Options, Real
from adcore.training import split_holdout, train_epochs, training_images

__all__ = ["Stfpm", "level_distances"]

_COMBINATIONS = ("product", "sum")


def level_distances(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per level, ½‖t̂ − ŝ‖² at every position, ``(B, h_l, w_l)``; ``teacher`` is already normalised."""
    return [0.5 * (t - F.normalize(s, p=2, dim=1)).pow(2).sum(1) for t, s in zip(teacher, student, strict=True)]


class Stfpm(FeatureDetector):
    """STFPM: a student regresses the normalised feature pyramid of a frozen pretrained teacher.

    Args:
        backbone: timm CNN name for both networks; the teacher's weights ship offline for the default.
        layers: stage names or indices, or ``None`` for the first stage at each of strides 4/8/16
            (ResNet ``layer1..3``, EfficientNet-Lite0 ``blocks.1``/``blocks.2``/``blocks.4``).
        weights: the teacher's weights: ``"pretrained"`` (the offline provider), ``"hub"`` (download
            from timm's hub) or ``None`` (random, for tests). The student always starts random.
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict of the timm model for the
            teacher; overrides ``weights``.
        epochs: training epochs over the good images (the paper: 100).
        batch_size: images per SGD step (the paper: 32).
        learning_rate, momentum, weight_decay: SGD settings (the paper: 0.4, 0.9, 1e-4).
        map_combination: ``"product"`` (the paper) or ``"sum"`` of the upsampled level maps.
        validation_fraction: share of the good images held out for early stopping (0 = off).
        patience: epochs without a lower validation loss before stopping (with a held-out share).
        input_size: images are resized to this side (or ``(h, w)``).
        seed: student initialisation, batch order and the held-out split.
    """

    #: images per forward pass of both networks in predict (bounds activation memory)
    predict_batch_size = 8
    #: both papers' "first three stages": ResNet layer1-3
    default_strides = (4, 8, 16)
    stage_pick = "first"
    parameter_constraints = {
        "epochs": [Integer(1, 100_000)],
        "learning_rate": [Real(0.0, 10.0, closed="right")],
        "momentum": [Real(0.0, 1.0, closed="left")],
        "weight_decay": [Real(0.0, 1.0)],
        "map_combination": [Options(*_COMBINATIONS)],
        "validation_fraction": [Real(0.0, 1.0, closed="left")],
        "patience": [Integer(1, 100_000)],
        # the batch order and the held-out split need a seed: no None (an unseeded fit) here
        "seed": [Integer(0, 2**63 - 1)],
    }

    def __init__(self, *, backbone: str = "tf_efficientnet_lite0", layers: Sequence[str | int] | None = None,
                 weights: str | None = "pretrained", checkpoint_path: str | Path | None = None,
                 epochs: int = 100, batch_size: int = 32, learning_rate: float = 0.4, momentum: float = 0.9,
                 weight_decay: float = 1e-4, map_combination: str = "product", validation_fraction: float = 0.0,
                 patience: int = 10, input_size: int = 256, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.map_combination = map_combination
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.input_size = input_size
        self.seed = seed

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        teacher = self.extractor
        images = training_images(stream)  # canonical order: the stream's order and batching do not matter
        with torch.no_grad():
            targets = [torch.cat(level) for level in zip(*(
                [F.normalize(f, p=2, dim=1) for f in teacher(images[i:i + self.predict_batch_size]).values()]
                for i in range(0, images.shape[0], self.predict_batch_size)), strict=True)]
        self._build_modules()
        student = self.student_

        def loss_fn(index: torch.Tensor) -> torch.Tensor:
            predicted = student(images[index]).values()
            distances = level_distances([t[index] for t in targets], list(predicted))
            # per image: mean over positions, summed over levels. The authors sum over the batch;
            # dividing that sum by the nominal batch size (and scaling the optimiser below to
            # match) gives identical updates while the logged loss reads as a per-image mean.
            return sum(d.flatten(1).mean(1).sum() for d in distances) / self.batch_size

        # train_epochs shuffles and slices the tensor it is given; handing it image *indices* lets
        # the loss look up the cached teacher targets for the same images
        train_index, held_out = split_holdout(torch.arange(images.shape[0]), self.validation_fraction, self.seed) \
            if self.validation_fraction > 0 else (torch.arange(images.shape[0]), None)
        optimizer = self._make_optimizer(student.parameters())
        history = train_epochs(loss_fn, train_index, optimizer, epochs=self.epochs, batch_size=self.batch_size,
                               seed=self.seed, modules=[student], validation_images=held_out,
                               patience=self.patience if held_out is not None else None, desc="stfpm: student",
                               device=self.device_, precision=self.precision)
        student.eval()
        self.history_ = history.as_dict()

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = [F.normalize(f, p=2, dim=1) for f in self.extractor(images).values()]
        student = list(self.student_(images).values())
        size = tuple(images.shape[-2:])
        maps = None
        for distance in level_distances(teacher, student):
            level = upsample(distance, size)
            if maps is None:
                maps = level
            elif self.map_combination == "product":
                maps = maps * level
            else:
                maps = maps + level
        return maps.flatten(1).amax(1), maps

    # -- helpers --------------------------------------------------------------------------------
    def _make_optimizer(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.SGD:
        """SGD for the loss (Σ over the batch)/batch_size that updates exactly as SGD(lr, wd) on the sum."""
        return torch.optim.SGD(parameters, lr=self.learning_rate * self.batch_size, momentum=self.momentum,
                               weight_decay=self.weight_decay / self.batch_size)

    def _build_modules(self) -> None:
        """The untrained student (``student_``), same architecture and stages as the teacher; its
        random initialisation is drawn from the seeded stream of ``fit``."""
        self.student_ = self.build_extractor(pretrained=False, trainable=True)
