"""Feature plumbing shared by PaDiM and STFPM (the one utility module of ad-stat).

Both papers read "the first three stages" of a CNN (ResNet layer1–3, strides 4/8/16). For any timm
backbone :func:`resolve_layers` picks the first stage at each of those strides, which for
EfficientNet-Lite0 is ``blocks.1``/``blocks.2``/``blocks.4`` (what anomalib uses too).
:func:`build_extractor` wraps adcore's :class:`~adcore.backbones.FeatureExtractor` and drops the
stages after the deepest requested one, which timm's EfficientNet feature wrapper would otherwise
still run (for Lite0, ``blocks.5``/``blocks.6``: wasted time at inference and in student training),
switches to channels-last memory and, when frozen, folds batch norms into the convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adcore.backbones import FeatureExtractor, backbone_layers
from adcore.errors import InvalidInputError

__all__ = ["PAPER_STRIDES", "resolve_layers", "build_extractor", "validate_layers", "fold_batch_norms"]

#: strides of ResNet layer1, layer2, layer3: the three levels both papers use
PAPER_STRIDES = (4, 8, 16)


def validate_layers(layers: Sequence[str] | None) -> None:
    """Reject a ``layers`` parameter that is neither ``None`` nor a non-empty sequence of names."""
    if layers is None:
        return
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers \
            or not all(isinstance(name, str) and name for name in layers):
        raise InvalidInputError(f"layers must be None (the stages at strides {PAPER_STRIDES}) or a non-empty sequence of "
                                f"stage names such as ('blocks.1', 'blocks.2', 'blocks.4'), got {layers!r}")
    if len(set(layers)) != len(layers):
        raise InvalidInputError(f"layers must not repeat a stage, got {layers!r}")


def resolve_layers(backbone: str, layers: Sequence[str] | None) -> list[str]:
    """``layers`` as given, or the first stage of ``backbone`` at each of :data:`PAPER_STRIDES`."""
    if layers is not None:
        return list(layers)
    stages = backbone_layers(backbone)
    chosen = []
    for stride in PAPER_STRIDES:
        match = next((stage["name"] for stage in stages if stage["stride"] == stride), None)
        if match is None:
            raise InvalidInputError(f"backbone {backbone!r} has no stage at stride {stride} (stages: "
                                    f"{[(s['name'], s['stride']) for s in stages]}); pass layers= explicitly")
        chosen.append(match)
    return chosen


def build_extractor(backbone: str, layers: Sequence[str], **kwargs: Any) -> FeatureExtractor:
    """A :class:`FeatureExtractor` that stops computing after the deepest requested stage.

    Its weights are channels-last, and a frozen extractor also gets its batch norms folded into the
    preceding convolutions (:func:`fold_batch_norms`): the same function of the input (up to float
    rounding) for about half the CPU time per image.
    """
    extractor = FeatureExtractor(backbone, list(layers), **kwargs)
    model = extractor.model
    stage_of_output = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    # timm's EfficientNetFeatures runs every block and only collects some; its forward iterates
    # ``self.blocks`` and appends after block i when i + 1 is an output stage, so cutting the
    # Sequential after the last output block changes no output. ResNet-style wrappers stop already.
    if isinstance(stage_of_output, dict) and isinstance(blocks, nn.Sequential) and stage_of_output \
            and getattr(model, "feature_hooks", None) is None:
        last = max(stage_of_output)
        if 0 < last < len(blocks):
            model.blocks = nn.Sequential(*list(blocks)[:last])
    if not extractor.trainable:
        fold_batch_norms(extractor.model)
    # oneDNN runs these convolutions about a quarter faster in NHWC on CPU, forward and backward
    extractor.to(memory_format=torch.channels_last)
    return extractor


#: block types whose forward is exactly conv → bn for the pairs above (checked by class name)
_FOLDABLE_OWNERS = {"EfficientNetFeatures": {("conv_stem", "bn1")},
                    "DepthwiseSeparableConv": {("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")},
                    "InvertedResidual": {("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"),
                                         ("conv_pwl", "bn3")},
                    "EdgeResidual": {("conv_exp", "bn1"), ("conv_pwl", "bn2")},
                    "ConvBnAct": {("conv", "bn1")}}


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> int:
    """Fold eval-mode batch norms of timm's EfficientNet/MobileNet blocks into their convolutions.

    ``bn(conv(x)) = conv'(x)`` with ``w' = w·γ/√(σ²+ε)`` and ``b' = β + (b − μ)·γ/√(σ²+ε)``; the batch
    norm is replaced by what it applies after normalising (timm's ``BatchNormAct2d``: dropout and
    activation). Only block types whose forward is known to apply the pair back to back are
    touched, so other architectures run unchanged. Returns the number of folded pairs.
    """
    folded = 0
    for owner in list(model.modules()):
        pairs = _FOLDABLE_OWNERS.get(type(owner).__name__, set())
        for conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)
            after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(owner, bn_name, nn.Sequential(*after) if after else nn.Identity())
            folded += 1
    return folded

