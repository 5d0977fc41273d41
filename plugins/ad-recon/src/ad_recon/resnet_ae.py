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

Architecture: backbone stage ``layer`` (default ``blocks.4``, stride 16, 112 channels for
EfficientNet-Lite0) → 1×1 conv bottleneck to ``latent_channels`` (the information bottleneck: the
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

``fine_tune=False`` (default): the backbone is frozen, kept out of the saved file and rebuilt from
its parameters; only the decoder trains. ``fine_tune=True``: the backbone trains too (with
``encoder_learning_rate``) and is saved with the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ad_recon.common import (
    ERRORS,
    ConvBlock,
    ConvDecoder,
    ReconstructionDetector,
    channel_widths,
    check_choice,
    is_int,
    is_number,
    reconstruction_loss,
)
from adcore.backbones import DEFAULT_BACKBONE, FeatureExtractor, backbone_layers
from adcore.ops import upsample

__all__ = ["ResNetAE", "PretrainedEncoderAE"]


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


class ResNetAE(ReconstructionDetector):
    """Pretrained-encoder autoencoder.

    Args:
        backbone: any timm CNN name (``tf_efficientnet_lite0`` works offline; ``resnet18`` etc.
            need timm's hub or ``checkpoint_path``).
        layer: the backbone stage decoded from (name or index).
        weights, checkpoint_path: as for :class:`adcore.backbones.FeatureExtractor`.
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
    errors = (*ERRORS, "feature")

    def __init__(self, *, input_size: int = 256, backbone: str = DEFAULT_BACKBONE, layer: str | int = "blocks.4",
                 weights: str | None = "pretrained", checkpoint_path: str | None = None, fine_tune: bool = False,
                 encoder_learning_rate: float = 1e-5, latent_channels: int = 64, base_channels: int = 32,
                 residual: bool = True, loss: str = "l2", error: str = "feature", epochs: int = 50, batch_size: int = 16,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-5, validation_fraction: float = 0.0,
                 patience: int = 5, augment: bool = False, sigma: float = 4.0, image_score: str = "topk",
                 topk_fraction: float = 0.01, seed: int = 0) -> None:
        self.input_size = input_size
        self.backbone = backbone
        self.layer = layer
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

    def _validate_params(self) -> None:
        super()._validate_params()
        check_choice(self, "backbone", isinstance(self.backbone, str) and bool(self.backbone), "a timm model name")
        check_choice(self, "layer", isinstance(self.layer, str) or is_int(self.layer), "a stage name or index")
        check_choice(self, "fine_tune", isinstance(self.fine_tune, bool), "True or False")
        check_choice(self, "encoder_learning_rate", is_number(self.encoder_learning_rate)
                     and self.encoder_learning_rate > 0, "a number > 0")
        check_choice(self, "latent_channels", is_int(self.latent_channels) and self.latent_channels >= 1, "an int >= 1")
        check_choice(self, "base_channels", is_int(self.base_channels) and self.base_channels >= 1, "an int >= 1")
        check_choice(self, "residual", isinstance(self.residual, bool), "True or False")
        check_choice(self, "loss", self.loss in ("l2", "ssim"), "'l2' or 'ssim'")

    # -- fit --------------------------------------------------------------------------------------
    def _fit(self, stream) -> None:
        super()._fit(stream)
        self.weights_source_ = self._encoder().weights_source

    def _make_network(self, pretrained: bool = True) -> nn.Module:
        encoder = self._create_encoder(pretrained) if self.fine_tune else self._pretrained_extractor()
        name = self._decoded_layer(encoder)
        return PretrainedEncoderAE(self.image_size, encoder.channels[name], encoder.strides[name], self.latent_channels,
                                   self.base_channels, self.residual, encoder if self.fine_tune else None)

    def _build_modules(self) -> None:
        # loading a fine-tuned model: the saved backbone weights replace these, so start random
        self.network_ = self._make_network(pretrained=False)

    def _optimizer_groups(self) -> list[dict]:
        decoder = [p for n, p in self.network_.named_parameters() if not n.startswith("encoder.")]
        groups = [{"params": decoder}]
        if self.fine_tune:
            groups.append({"params": list(self.network_.encoder.parameters()), "lr": self.encoder_learning_rate})
        return groups

    def _training_loss(self, images: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(images, self._reconstruct(images), self.loss)

    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        encoder = self._encoder()
        name = self._decoded_layer(encoder)
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
        extractor = self._pretrained_extractor()  # frozen and pretrained even when the encoder is fine-tuned
        size = tuple(images.shape[-2:])
        original, rebuilt = extractor(images), extractor(reconstructions)
        levels = [upsample((original[name] - rebuilt[name]).pow(2).mean(1), size) for name in extractor.layer_names]
        return torch.stack(levels).mean(0)

    # -- helpers ------------------------------------------------------------------------------------
    def _encoder(self) -> FeatureExtractor:
        return self.network_.encoder if self.fine_tune else self._pretrained_extractor()

    def _pretrained_extractor(self) -> FeatureExtractor:
        """The frozen pretrained backbone at ``layer`` and its deepest stages of stride 4 and 8.

        One backbone serves both the frozen encoder (``layer``) and the perceptual error (all three
        stages); for the default ``layer`` the finer stages lie on the way to it and cost nothing extra.
        """
        key = (self.backbone, self.layer, self.weights, self.checkpoint_path)
        if getattr(self, "_extractor", None) is None or getattr(self, "_extractor_key", None) != key:
            # the stage probe builds a timm model; it runs inside fit, before the decoder is
            # initialised, so it must not draw from the seeded global stream
            with torch.random.fork_rng(devices=[]):
                stages = backbone_layers(self.backbone)
            order = {stage["name"]: index for index, stage in enumerate(stages)}
            decoded = stages[self.layer]["name"] if is_int(self.layer) and 0 <= self.layer < len(stages) else self.layer
            layers: list[str | int] = [self.layer]  # an unknown layer: FeatureExtractor names the valid ones
            if decoded in order:
                finer = {next((s["name"] for s in reversed(stages) if s["stride"] == stride), None) for stride in (4, 8)}
                # network order: FeatureExtractor labels timm's outputs in the order it is given
                layers = sorted((finer - {None}) | {decoded}, key=order.__getitem__)
            self._extractor = FeatureExtractor(self.backbone, layers, weights=self.weights,
                                               checkpoint_path=self.checkpoint_path)
            self._extractor_layer = decoded
            self._extractor_key = key
        return self._extractor

    def _decoded_layer(self, encoder: FeatureExtractor) -> str:
        """Name of ``layer`` among ``encoder``'s outputs (the fine-tuned encoder has only that one)."""
        return encoder.layer_names[0] if self.fine_tune else self._extractor_layer

    def _create_encoder(self, pretrained: bool) -> FeatureExtractor:
        return FeatureExtractor(self.backbone, [self.layer], weights=self.weights if pretrained else None,
                                checkpoint_path=self.checkpoint_path if pretrained else None,
                                trainable=self.fine_tune)
