"""EfficientAD — Batzner, Heckler, König, "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024.

A patch description network (PDN) teacher, distilled from a pretrained backbone, is frozen; a
student PDN with twice the teacher's output channels learns (a) to predict the teacher's
normalised features on normal images (first half of its channels, *local* anomalies) and (b) to
predict an autoencoder's output (second half, *logical/global* anomalies). Losses, as in the
paper's Algorithm 1: the hard feature loss (mean of the squared differences at or above their
0.999 quantile), the penalty loss (mean squared student output on out-of-distribution images),
the autoencoder loss against the teacher on colour-jittered images and the student–autoencoder
discrepancy loss. At test time the local map (teacher–student) and the global map
(autoencoder–student) are each normalised with their 0.9 and 0.995 quantiles on held-out normal
images, mapped so that those quantiles land on 0 and 0.1, and averaged; the image score is the
maximum of the combined map.

Deliberate deviations from the paper (each a parameter unless noted):

* Teacher distillation is offline (see :mod:`ad_distill.teachers`): from the detector's
  ``backbone`` read through core's shared extractor, by default EfficientNet-Lite0 (``layers=None``:
  stages ``blocks.2`` + ``blocks.4``, the analogue of WideResNet-101 layer2 + layer3 in the paper;
  another timm backbone offline with ``checkpoint_path=``) on the *training images under
  augmentation* or any image folder (``teacher_data_dir``) instead of 60k ImageNet iterations; a 1×1 linear decoder maps the 384
  teacher channels onto the backbone's 152 target channels during distillation (the paper's target
  has 384 channels from WideResNet-101, so it matches directly). ``teacher_path`` loads a ready one.
* Penalty images come from ``penalty_dir`` or, by default, from the training images distorted by
  tile shuffling and colour permutation (the paper draws ImageNet images). ``penalty=False`` drops
  the penalty loss.
* ``width`` scales the PDN's hidden channels (paper: 1.0 = 128/256 for PDN-S) so the method can
  be trained within CPU budgets; ``teacher_channels`` may be lowered from the paper's 384.
  The student always has ``2 × teacher_channels`` outputs. Defaults are the paper's.
* The autoencoder's bottleneck convolution has kernel ``input_size / 32`` (8 at the paper's 256)
  and its upsampling sizes follow ``input_size``, so other sizes work; at 256 it is the paper's.
* Training length is ``train_steps`` optimiser steps of ``batch_size`` images (paper: 70,000 of 1)
  with the learning rate divided by 10 after 95 %; steps are rounded up to whole epochs.
* The quantiles are computed on ``validation_fraction`` of the training images held out from student
  training (MVTec has no validation split).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ad_distill.distillation import FOLDER, DistillationDetector
from ad_distill.images import PenaltySource, colour_jitter_one
from ad_distill.teachers import (
    ImageNetNormalize,
    channel_statistics,
    grid_to_image,
    sampled_quantile,
    steps_to_epochs,
)
from adcore.errors import InvalidInputError
from adcore.inputs import ImageStream
from adcore.params import Boolean, Check, ConstraintSpec, FilePath, Integer, Options, Size
from adcore.training import train_epochs, training_images

__all__ = ["EfficientAD", "PDN", "hard_feature_loss", "EfficientADAutoencoder", "pdn_output_size"]

HARD_QUANTILE = 0.999  # hard feature loss: only the hardest 0.1 % of differences are trained on
QUANTILE_A, QUANTILE_B = 0.9, 0.995  # map normalisation: these quantiles go to 0 and 0.1


class EfficientAD(DistillationDetector):
    """EfficientAD-S (``model_size="small"``) or -M (``"medium"``); see the module docstring.

    Args:
        model_size: ``"small"`` (PDN-S) or ``"medium"`` (PDN-M).
        teacher_channels: output channels of the teacher PDN (paper: 384); the student has twice as many.
        width: scale of the PDNs' hidden channels (1.0 = the paper's).
        backbone: timm backbone the teacher is distilled from (the distillation target).
        layers: its stages the teacher regresses; ``None``: the deepest stage at strides 8 and 16
            (EfficientNet-Lite0 ``blocks.2`` + ``blocks.4``, ResNet ``layer2`` + ``layer3``). Was ``teacher_layers``.
        weights: ``"pretrained"`` (offline provider), ``"hub"`` (timm's hub, downloads) or ``None`` (random).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict of the backbone; overrides ``weights``
            (the offline way to distil from any timm backbone).
        teacher_steps: distillation optimiser steps (rounded up to whole epochs).
        teacher_batch_size: images per distillation step.
        teacher_learning_rate: Adam learning rate of the distillation (was ``teacher_lr``).
        teacher_path: a ready teacher file of this distribution's format; skips distillation.
        teacher_data_dir: a folder of natural images to distil on (default: the training images, augmented).
        penalty: use the penalty loss.
        penalty_dir: a folder of penalty images (default: distorted training images).
        train_steps: student/autoencoder optimiser steps (paper: 70,000), rounded up to whole epochs.
        batch_size: images per student step.
        learning_rate: Adam learning rate of student and autoencoder (was ``lr``).
        weight_decay: Adam weight decay.
        validation_fraction: share of the training images held out for the map quantiles (was ``holdout_fraction``).
        cache_dir: teacher cache folder (default ``$ADCORE_CACHE_DIR`` or ``~/.cache/adcore``).
        use_cache: read and write the teacher cache.
        channels_last: feed the networks channels-last tensors at prediction.
        input_size: image side (or ``(height, width)``), at least 64.
        seed: seed of initialisation, augmentation and the held-out split.
    """

    # the exported graph holds the teacher's, student's and autoencoder's intermediates for the whole
    # batch, so its runtime memory grows with it: deployed consumers call it two images at a time, which
    # measured well under the batch-8 peak at the same ms/image (docs/deployment.md)
    export_max_batch = 2
    parameter_constraints: ClassVar[Mapping[str, ConstraintSpec]] = {
        "model_size": [Options("small", "medium")],
        "teacher_channels": [Integer(1, 4096)],
        "teacher_path": [FilePath(), None],
        "penalty": [Boolean()],
        "penalty_dir": [FOLDER, None],
        "channels_last": [Boolean()],
        "input_size": [Check(Size(64, 4096).accepts, "a side in pixels or (height, width), each between 64 and 4096 "
                             "(the PDN's receptive field is 33 pixels and the autoencoder halves the image 5 times)")],
    }

    def __init__(self, *, model_size: str = "small", teacher_channels: int = 384, width: float = 1.0,
                 backbone: str = "tf_efficientnet_lite0", layers: Sequence[str | int] | None = None,
                 weights: str | None = "pretrained", checkpoint_path: str | os.PathLike[str] | None = None,
                 teacher_steps: int = 10_000, teacher_batch_size: int = 16, teacher_learning_rate: float = 1e-4,
                 teacher_path: str | os.PathLike[str] | None = None,
                 teacher_data_dir: str | os.PathLike[str] | None = None,
                 penalty: bool = True, penalty_dir: str | os.PathLike[str] | None = None,
                 train_steps: int = 70_000, batch_size: int = 1, learning_rate: float = 1e-4,
                 weight_decay: float = 1e-5, validation_fraction: float = 0.1,
                 cache_dir: str | os.PathLike[str] | None = None, use_cache: bool = True,
                 channels_last: bool = True, input_size: int | tuple[int, int] = 256, seed: int = 0) -> None:
        self.model_size = model_size
        self.teacher_channels = teacher_channels
        self.width = width
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.teacher_steps = teacher_steps
        self.teacher_batch_size = teacher_batch_size
        self.teacher_learning_rate = teacher_learning_rate
        self.teacher_path = teacher_path
        self.teacher_data_dir = teacher_data_dir
        self.penalty = penalty
        self.penalty_dir = penalty_dir
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.channels_last = channels_last
        self.input_size = input_size
        self.seed = seed

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        images = training_images(stream)  # canonical order: the stream's order and batching do not matter
        train, held = self._split_validation(images)
        spec = self._teacher_spec(f"pdn_{self.model_size}", {"out_channels": int(self.teacher_channels),
                                                             "width": float(self.width)}, images.shape[0])
        self.teacher_, self.teacher_provenance_ = self._obtain_teacher(spec, self._new_teacher, images, self.teacher_path)
        # paper: teacher outputs are normalised by their channel mean and std over the training images
        self.teacher_mean_, self.teacher_std_ = channel_statistics(self.teacher_, train)
        self._build_trainable()
        self.training_summary_ = self._train(train)
        self._set_quantiles(held)

    def _train(self, train: torch.Tensor) -> dict[str, Any]:
        channels = int(self.teacher_channels)
        penalty = PenaltySource.create(self.penalty_dir, train, self.image_size, self.seed) if self.penalty else None
        generator = torch.Generator().manual_seed(self.seed + 1)
        student, autoencoder = self.student_, self.autoencoder_

        def loss_fn(batch: torch.Tensor) -> torch.Tensor:
            count = batch.shape[0]
            augmented = colour_jitter_one(batch, generator)
            with torch.no_grad():
                teacher = self._teacher_features(torch.cat([batch, augmented]))
            inputs = [batch, augmented] + ([penalty.sample(count)] if penalty is not None else [])
            outputs = student(torch.cat(inputs))  # one pass over all three: the PDN has no batch statistics
            loss = hard_feature_loss((teacher[:count] - outputs[:count, :channels]) ** 2)
            if penalty is not None:
                loss = loss + outputs[2 * count:, :channels].pow(2).mean()
            reconstruction = autoencoder(augmented)
            loss = loss + F.mse_loss(reconstruction, teacher[count:])  # autoencoder ← teacher
            return loss + F.mse_loss(outputs[count:2 * count, channels:], reconstruction)  # student ↔ autoencoder

        epochs = steps_to_epochs(int(self.train_steps), train.shape[0], int(self.batch_size))
        optimizer = torch.optim.Adam(list(student.parameters()) + list(autoencoder.parameters()), lr=float(self.learning_rate),
                                     weight_decay=float(self.weight_decay))
        # paper: learning rate × 0.1 after 95 % of the iterations
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[max(1, int(0.95 * epochs))], gamma=0.1)
        history = train_epochs(loss_fn, train, optimizer, epochs=epochs, batch_size=int(self.batch_size), seed=self.seed,
                               modules=[student, autoencoder], scheduler=scheduler, desc="EfficientAD",
                               device=self.device_, precision=self.precision)
        return {"epochs": epochs, "steps": epochs * math.ceil(train.shape[0] / int(self.batch_size)),
                "final_loss": history.loss[-1], "first_loss": history.loss[0],
                "penalty_source": penalty.description if penalty is not None else None}

    def _set_quantiles(self, held: torch.Tensor) -> None:
        local, global_ = [], []
        with torch.no_grad():
            for start in range(0, held.shape[0], 8):
                st, ae = self._raw_maps(held[start:start + 8])
                local.append(st)
                global_.append(ae)
        local_maps, global_maps = torch.cat(local), torch.cat(global_)
        self.quantiles_ = torch.tensor([
            sampled_quantile(local_maps, QUANTILE_A, seed=self.seed), sampled_quantile(local_maps, QUANTILE_B, seed=self.seed),
            sampled_quantile(global_maps, QUANTILE_A, seed=self.seed), sampled_quantile(global_maps, QUANTILE_B, seed=self.seed)])

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        local, global_ = self._raw_maps(images)
        qa_st, qb_st, qa_ae, qb_ae = (float(v) for v in self.quantiles_)
        local = 0.1 * (local - qa_st) / max(qb_st - qa_st, 1e-12)
        global_ = 0.1 * (global_ - qa_ae) / max(qb_ae - qa_ae, 1e-12)
        combined = 0.5 * local + 0.5 * global_
        return combined.flatten(1).amax(1), combined

    # -- helpers --------------------------------------------------------------------------------
    def _raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised local (teacher–student) and global (autoencoder–student) maps at image size."""
        channels = int(self.teacher_channels)
        teacher = self._teacher_features(images)
        student = self.student_(images)
        reconstruction = self.autoencoder_(images)
        local = ((teacher - student[:, :channels]) ** 2).mean(1)
        global_ = ((reconstruction - student[:, channels:]) ** 2).mean(1)
        size = self.image_size
        # paper: maps are zero-padded by the receptive field's margin, then resized to the image
        return grid_to_image(local, size, 4), grid_to_image(global_, size, 4)

    def _teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        return (self.teacher_(images) - self.teacher_mean_) / self.teacher_std_

    def _new_teacher(self) -> PDN:
        return PDN(self.model_size, int(self.teacher_channels), float(self.width))

    def _build_trainable(self) -> None:
        grid = pdn_output_size(self.image_size)
        # drawn on the CPU (the same initial weights on every device), trained on device_
        self.student_ = PDN(self.model_size, 2 * int(self.teacher_channels), float(self.width)).to(self.device_)
        self.autoencoder_ = EfficientADAutoencoder(int(self.teacher_channels), self.image_size, grid).to(self.device_)

    def _build_modules(self) -> None:
        self.teacher_ = self._new_teacher()
        self._build_trainable()


def hard_feature_loss(distance: torch.Tensor, quantile: float = HARD_QUANTILE) -> torch.Tensor:
    """Mean of the squared differences at or above their ``quantile`` (the paper's hard feature loss).

    ``topk`` of the top ``(1 − q)`` share equals "≥ the q-quantile" up to ties, without
    ``torch.quantile``'s 2**24-element limit and its full sort.
    """
    flat = distance.flatten()
    count = max(1, math.ceil((1.0 - quantile) * flat.numel()))
    return torch.topk(flat, count, sorted=False).values.mean()


def pdn_output_size(size: tuple[int, int]) -> tuple[int, int]:
    """Output grid of an unpadded PDN (small and medium alike): 56×56 for 256×256."""
    def side(n: int) -> int:
        n = (n - 3) // 2  # conv 4×4, avg-pool 2/2
        n = (n - 3) // 2  # conv 4×4, avg-pool 2/2
        return n - 2 - 3  # conv 3×3, conv 4×4
    return side(size[0]), side(size[1])


class PDN(nn.Module):
    """Patch description network (paper Tables 5/6), unpadded, receptive field 33, output stride 4.

    ``width`` scales the hidden channels (1.0: small 128/256/256, medium 256/512/512/512).
    """

    def __init__(self, size: str, out_channels: int, width: float = 1.0) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize()
        if size == "small":
            a, b = max(1, round(128 * width)), max(1, round(256 * width))
            self.layers = nn.Sequential(
                nn.Conv2d(3, a, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
                nn.Conv2d(a, b, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
                nn.Conv2d(b, b, 3), nn.ReLU(inplace=True),
                nn.Conv2d(b, out_channels, 4))
        elif size == "medium":
            a, b = max(1, round(256 * width)), max(1, round(512 * width))
            self.layers = nn.Sequential(
                nn.Conv2d(3, a, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
                nn.Conv2d(a, b, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
                nn.Conv2d(b, b, 1), nn.ReLU(inplace=True),
                nn.Conv2d(b, b, 3), nn.ReLU(inplace=True),
                nn.Conv2d(b, out_channels, 4), nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 1))
        else:
            raise InvalidInputError(f"PDN size must be 'small' or 'medium', got {size!r}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(images))


class EfficientADAutoencoder(nn.Module):
    """The paper's autoencoder: six strided convolutions down to a 64-d code, eight up with dropout 0.2.

    The decoder bilinearly upsamples to the same intermediate sizes as the reference
    implementations (3, 8, 15, 32, 63, 127 for 256 px), ending on the PDN's output grid.
    """

    def __init__(self, out_channels: int, image_size: tuple[int, int], grid: tuple[int, int]) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize()
        height, width = image_size
        bottleneck = (max(1, height // 32), max(1, width // 32))
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, bottleneck))
        self.sizes = [(max(1, height // 64 - 1), max(1, width // 64 - 1)), (height // 32, width // 32),
                      (height // 16 - 1, width // 16 - 1), (height // 8, width // 8),
                      (height // 4 - 1, width // 4 - 1), (height // 2 - 1, width // 2 - 1), tuple(grid)]
        self.up = nn.ModuleList([nn.Conv2d(64, 64, 4, 1, 2) for _ in range(6)] + [nn.Conv2d(64, 64, 3, 1, 1)])
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Conv2d(64, out_channels, 3, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.normalize(images))
        for index, (size, conv) in enumerate(zip(self.sizes, self.up, strict=False)):
            x = F.relu(conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False)))
            if index < 6:
                x = self.dropout(x)
        return self.head(x)
