"""Autoencoder with a pretrained CNN encoder (any timm/adcore backbone) and a trained decoder.

Idea: the encoder of a reconstruction model does not have to be learned from the few good images
at hand; an ImageNet-pretrained CNN (a ResNet in the usual "ResNet-AE" baselines; here any
backbone adcore can load, EfficientNet-Lite0 with offline weights by default) already gives a
rich description of every patch. The decoder learns, from good images only, to map one backbone
stage back to pixels. Anomalous patches produce features that the decoder never learned to
invert, so their reconstruction falls back to what normal images look like, and the per-pixel
error (L2 or 1 - SSIM, smoothed) is the anomaly map. Reference points: the pretrained-encoder
autoencoders of e.g. "Deep Feature Reconstruction" (Y. Shi, J. Yang, Z. Qi, "Unsupervised anomaly
segmentation via deep feature reconstruction", Neurocomputing 2021, which reconstructs features
rather than pixels) and the perceptual/pretrained AE baselines of the MVTec AD benchmark
literature; there is no single canonical paper for a "ResNet-AE".

Architecture: backbone stage ``layers[0]`` (default: the deepest stage at stride 16, ``blocks.4``
with 112 channels for EfficientNet-Lite0, ``layer3`` for a ResNet) → 1×1 conv bottleneck to ``latent_channels`` (the information bottleneck: the
decoder cannot copy the stage wholesale) → ``log2(stride)`` resize-convolution levels
(:class:`ad_recon.common.ConvDecoder`) → RGB through a sigmoid.

Besides the pixel errors, ``error="feature"`` compares the input and its reconstruction in the
pretrained backbone's feature space (a perceptual error, as in the perceptual losses of Johnson et
al., ECCV 2016: the frozen, pretrained backbone at its deepest stages of stride 4 and 8 and the
decoded stage, per-stage squared distance averaged over channels, upsampled and averaged): blur of
the reconstruction, which dominates pixel errors on edges and fine texture, costs little there,
while a defect that the decoder replaced by normal appearance does.

Why ``error="feature"`` is the default here (a deliberate deviation from the per-pixel L2/SSIM
map of the other reconstruction models, which stay available as ``error="l2"``/``"ssim"``): a
decoder from a stride-16 stage cannot redraw fine texture, so pixel errors mostly measure that blur
and their image AUROC on MVTec bottle sat at the 0.90 line and moved with the initialisation (0.864
/ 0.916 with ``"l2"``, 0.912 / 0.890 with ``"ssim"`` in two fits of the same budget), while the
perceptual error ranked it at 0.985 (pixel AUROC 0.929). Computed on the decoded stage alone it
missed PIPED's small impurities (PA_BDP01_TL at 128 px: 0.706); with the stride-4 and stride-8
stages added it reaches 0.997 there (docs/ad-recon.md).

``fine_tune=False`` (default): the backbone is frozen (the shared extractor of
:class:`adcore.feature_detector.FeatureDetector`), kept out of the saved file and rebuilt from its
parameters; only the decoder trains. ``fine_tune=True``: a copy of the backbone up to the decoded
stage trains too (with ``encoder_learning_rate``) and is saved with the decoder; the perceptual
error still reads the frozen pretrained one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ad_recon.common import (
    ERRORS,
    LOSS_CONSTRAINT,
    ConvBlock,
    ConvDecoder,
    ReconstructionDetector,
    channel_widths,
    reconstruction_loss,
)
from adcore.backbones import DEFAULT_BACKBONE, FeatureExtractor, stages
from adcore.feature_detector import FeatureDetector
from adcore.ops import upsample
from adcore.params import Boolean, ConstraintSpec, Integer, Options, Real, Stages

__all__ = ["ResNetAE", "PretrainedEncoderAE"]

#: strides of the finer pretrained stages the perceptual error adds to the decoded one
_PERCEPTUAL_STRIDES = (4, 8)


class PretrainedEncoderAE(nn.Module):
    """Decoder from one backbone stage; holds the backbone only when it is fine-tuned."""

    def __init__(self, size: tuple[int, int], channels: int, stride: int, latent_channels: int, base_channels: int,
                 residual: bool, encoder: FeatureExtractor | None = None) -> None:
        super().__init__()
        self.size = tuple(size)
        self.encoder = encoder
        levels = max(1, int(round(math.log2(stride))))
        self.bottleneck = ConvBlock(channels, latent_channels, kernel_size=1)
        self.decoder = ConvDecoder(channel_widths(base_channels, levels), residual=residual,
                                   in_channels=latent_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bottleneck(features), self.size)


class ResNetAE(ReconstructionDetector, FeatureDetector):
    """Pretrained-encoder autoencoder.

    Args:
        backbone: any timm CNN name (``tf_efficientnet_lite0`` works offline; ``resnet18`` etc.
            need ``weights="hub"`` or ``checkpoint_path``).
        layers: a one-element tuple, the backbone stage decoded from (name or index); ``None`` =
            the deepest stage at stride 16 (``blocks.4`` for EfficientNet-Lite0). ``layer=`` (one
            stage, not a tuple) is the deprecated old name.
        weights, checkpoint_path: as for :class:`adcore.backbones.FeatureExtractor` (``"pretrained"``:
            offline weights; ``"hub"``: timm's download; a local state dict overrides both).
        fine_tune: train the backbone too (saved with the model) instead of freezing it.
        encoder_learning_rate: Adam learning rate of the backbone when ``fine_tune``.
        latent_channels: channels of the 1×1 bottleneck after the stage.
        base_channels: channels of the finest decoder level (doubling towards the coarse end).
        residual: add a residual block after every decoder level.
        error: ``"feature"`` (default; perceptual: squared distance between the pretrained backbone's
            features of the input and of the reconstruction at three stages, upsampled; see the
            module docstring), or ``"l2"``/``"ssim"``, the per-pixel errors of the other models.
        loss, epochs, batch_size, learning_rate, weight_decay, validation_fraction,
            patience, augment, sigma, image_score, topk_fraction: as for
            :class:`ad_recon.vanilla_ae.VanillaAE`.
    """

    progress_name = "resnet_ae"
    default_strides = (16,)
    stage_pick = "last"
    parameter_constraints: ClassVar[Mapping[str, ConstraintSpec]] = {
        "layers": [Stages(count=1), None],
        "fine_tune": [Boolean()],
        "encoder_learning_rate": [Real(0.0, 10.0, closed="right")],
        "latent_channels": [Integer(1, 4096)],
        "base_channels": [Integer(1, 1024)],
        "residual": [Boolean()],
        "loss": LOSS_CONSTRAINT,
        "error": [Options(*ERRORS, "feature")],
    }
    parameter_aliases = {"layer": ("layers", lambda value: None if value is None else (value,))}

    def __init__(self, *, input_size: int = 256, backbone: str = DEFAULT_BACKBONE,
                 layers: Sequence[str | int] | None = None, weights: str | None = "pretrained",
                 checkpoint_path: str | None = None, fine_tune: bool = False,
                 encoder_learning_rate: float = 1e-5, latent_channels: int = 64, base_channels: int = 32,
                 residual: bool = True, loss: str = "l2", error: str = "feature", epochs: int = 50, batch_size: int = 16,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-5, validation_fraction: float = 0.0,
                 patience: int = 5, augment: bool = False, sigma: float = 4.0, image_score: str = "topk",
                 topk_fraction: float = 0.01, seed: int = 0) -> None:
        self.input_size = input_size
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.fine_tune = fine_tune
        self.encoder_learning_rate = encoder_learning_rate
        self.latent_channels = latent_channels
        self.base_channels = base_channels
        self.residual = residual
        self.loss = loss
        self.error = error
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.augment = augment
        self.sigma = sigma
        self.image_score = image_score
        self.topk_fraction = topk_fraction
        self.seed = seed

    # -- stages -----------------------------------------------------------------------------------
    def decoded_stage(self) -> str | int:
        """The stage decoded from, by name when the backbone has it (an index is translated)."""
        layer = self.resolved_layers()[0]
        names = [stage.name for stage in stages(self.backbone)]
        if isinstance(layer, int) and 0 <= layer < len(names):
            return names[layer]
        return layer  # a name, or an invalid one that FeatureExtractor reports with the valid stages

    def extractor_layers(self) -> tuple[str | int, ...]:
        """The decoded stage and the deepest stages at strides 4 and 8, in network order.

        One frozen backbone serves both the encoder and the perceptual error; for the default
        stage the finer ones lie on the way to it and cost nothing extra.
        """
        decoded = self.decoded_stage()
        offered = stages(self.backbone)
        order = {stage.name: index for index, stage in enumerate(offered)}
        if decoded not in order:
            return (decoded,)
        finer = {next((s.name for s in reversed(offered) if s.stride == stride), None) for stride in _PERCEPTUAL_STRIDES}
        # network order: FeatureExtractor labels timm's outputs in the order it is given
        return tuple(sorted((finer - {None}) | {decoded}, key=order.__getitem__))

    # -- fit --------------------------------------------------------------------------------------
    def _fit(self, stream) -> None:
        super()._fit(stream)
        self.weights_source_ = self._encoder().weights_source

    def _make_network(self, pretrained: bool = True) -> nn.Module:
        encoder = self.build_extractor([self.decoded_stage()], pretrained=pretrained, trainable=True) \
            if self.fine_tune else self.extractor
        name = self._decoded_name(encoder)
        return PretrainedEncoderAE(self.image_size, encoder.channels[name], encoder.strides[name], self.latent_channels,
                                   self.base_channels, self.residual, encoder if self.fine_tune else None)

    def _build_modules(self) -> None:
        # loading a fine-tuned model: the saved backbone weights replace these, so start random
        self.network_ = self._make_network(pretrained=False)

    def _optimizer_groups(self) -> list[dict[str, Any]]:
        decoder = [p for n, p in self.network_.named_parameters() if not n.startswith("encoder.")]
        groups: list[dict[str, Any]] = [{"params": decoder}]
        if self.fine_tune:
            groups.append({"params": list(self.network_.encoder.parameters()), "lr": self.encoder_learning_rate})
        return groups

    def _training_loss(self, images: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(images, self._reconstruct(images), self.loss)

    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        encoder = self._encoder()
        name = self._decoded_name(encoder)
        if self.fine_tune:
            features = encoder(images)[name]
        else:
            with torch.no_grad():  # frozen: no graph through the backbone
                features = encoder(images)[name]
        return self.network_(features)

    def _error_map(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        if self.error != "feature":
            return super()._error_map(images, reconstructions)
        # perceptual error (Johnson et al.): per stage, the squared distance between the features of
        # the input and of its reconstruction, averaged over channels; the stages at stride 4 and 8
        # resolve small defects that the decoded stride-16 stage alone blurs away
        extractor = self.extractor  # frozen and pretrained even when the encoder is fine-tuned
        size = tuple(images.shape[-2:])
        original, rebuilt = extractor(images), extractor(reconstructions)
        levels = [upsample((original[name] - rebuilt[name]).pow(2).mean(1), size) for name in extractor.layer_names]
        return torch.stack(levels).mean(0)

    # -- helpers ------------------------------------------------------------------------------------
    def _encoder(self) -> FeatureExtractor:
        return self.network_.encoder if self.fine_tune else self.extractor

    def _decoded_name(self, encoder: FeatureExtractor) -> str:
        """Name of the decoded stage among ``encoder``'s outputs (the fine-tuned encoder has only that one)."""
        return encoder.layer_names[0] if self.fine_tune else str(self.decoded_stage())
