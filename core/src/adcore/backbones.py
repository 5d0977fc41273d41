"""The one feature path: stages of timm backbones and the frozen extractors every detector shares.

``FeatureExtractor("tf_efficientnet_lite0", layers=("blocks.2", "blocks.4"))`` returns a dict of
named feature maps for a ``(B,3,H,W)`` batch in [0, 1], applying the backbone's own normalisation.
Stages are chosen by name, index, or by stride with :func:`select_stages` (papers name ResNet
stages; a stride names the equivalent stage of any CNN). An extractor stops computing after the
deepest stage it returns; a frozen one also has its batch norms folded into the convolutions and
runs channels-last (the same function up to float rounding, about half the CPU time).
:func:`shared_extractor` is the one cache of frozen extractors, so detectors, their reloads and
their copies share one instance per (backbone, layers, weights, device, precision): the CPU
float32 one is built first, and one for another device or precision is its copy moved there.

Weights: see :mod:`adcore.weights` (a local file, an offline provider, or timm's hub when asked).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from adcore.devices import autocast, check_precision
from adcore.errors import BackboneWeightsError, InvalidInputError
from adcore.seeding import seeded
from adcore.weights import load_weights

__all__ = ["DEFAULT_BACKBONE", "CPU_PIXELS_PER_PASS", "Stage", "FeatureExtractor", "BackboneWeightsError", "stages", "select_stages",
           "deepest_stage", "shared_extractor", "fold_batch_norms", "backbone_layers",
           "create_backbone"]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"

StagePick = Literal["first", "last"]

#: A frozen CPU forward of a larger batch runs in passes of about this many pixels (two 256-px
#: images). The expanded activations of a batch of 8 at 256 px (96 channels at stride 2: 50 MB each,
#: plus the padded copy of a "same" convolution) outgrow the caches and the heap: passes of 2 gave the
#: bit-identical features at 0.5-0.9x the time and 130 MB less peak memory (Lite0, 2 threads; docs/ad-stat.md).
CPU_PIXELS_PER_PASS = 2 * 256 * 256


@dataclass(frozen=True)
class Stage:
    """One feature stage a timm backbone offers."""

    name: str
    index: int
    channels: int
    stride: int


@functools.lru_cache(maxsize=32)
def stages(backbone: str) -> tuple[Stage, ...]:
    """Every stage of ``backbone`` in network order (building a timm model costs ~0.3 s: once per name).

    The probe runs with the RNG state forked, so looking stages up (cached or not) never changes the
    random numbers a detector draws next.
    """
    with torch.random.fork_rng(devices=[]):
        info = _create_timm(backbone, out_indices=None).feature_info
    return tuple(Stage(n, i, c, s) for i, (n, c, s) in enumerate(zip(info.module_name(), info.channels(), info.reduction())))


def select_stages(backbone: str, strides: Sequence[int], pick: StagePick = "first") -> tuple[str, ...]:
    """The stage of ``backbone`` at each stride: the ``first`` or the ``last`` one when several share it.

    PaDiM and STFPM read ResNet layer1-3 as "the first stage at strides 4/8/16" (EfficientNet-Lite0:
    ``blocks.1/2/4``); PatchCore and SPADE take the deepest stage at a stride (``blocks.2``/``blocks.4``
    for strides 8/16).
    """
    if pick not in ("first", "last"):
        raise InvalidInputError(f"pick must be 'first' or 'last', got {pick!r}")
    offered = stages(backbone)
    chosen = []
    for stride in strides:
        matching = [stage.name for stage in offered if stage.stride == stride]
        if not matching:
            table = {stage.name: stage.stride for stage in offered}
            raise InvalidInputError(f"backbone {backbone!r} has no stage at stride {stride} (stages and strides: {table}); "
                                    "pass layers=... explicitly")
        chosen.append(matching[0] if pick == "first" else matching[-1])
    return tuple(chosen)


def deepest_stage(backbone: str) -> str:
    """The last stage of ``backbone`` (the one global pooling follows)."""
    return stages(backbone)[-1].name


def backbone_layers(name: str) -> list[dict[str, Any]]:
    """``[{"name", "index", "channels", "stride"}, ...]`` for every stage a timm backbone offers."""
    return [{"name": s.name, "index": s.index, "channels": s.channels, "stride": s.stride} for s in stages(name)]


def _create_timm(name: str, out_indices: Sequence[int] | None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"features_only": True, "pretrained": False}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise InvalidInputError(f"unknown backbone {name!r}; timm knows e.g. {close or timm.list_models()[:8]}. "
                                    "Any CNN name from timm.list_models() works") from exc
        raise


class FeatureExtractor(nn.Module):
    """A timm backbone returning ``{layer_name: (B,C,h,w)}``, frozen by default.

    Args:
        backbone: any timm model name that supports ``features_only``.
        layers: stage module names (``"blocks.2"``, ``"layer2"``) or stage indices.
        weights: ``"pretrained"`` (offline provider), ``"hub"`` (download from timm's hub), or
            ``None`` for random initialisation (tests, or training from scratch).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict; overrides ``weights``.
        trainable: leave parameters trainable (default: frozen, eval mode, batch norms folded).
        precision: ``"32"``, or ``"16-mixed"``/``"bf16-mixed"`` to run the backbone under autocast
            (:func:`adcore.devices.autocast`); the features come back as float32 either way.

    Frozen or not, the network stops after the deepest requested stage and runs channels-last.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, layers: Sequence[str | int] = ("blocks.2", "blocks.4"),
                 *, weights: str | None = "pretrained", checkpoint_path: str | Path | None = None,
                 trainable: bool = False, precision: str = "32") -> None:
        super().__init__()
        self.backbone_name = backbone
        self.precision = check_precision(precision)
        names = [stage.name for stage in stages(backbone)]
        indices = [_stage_index(layer, names, backbone) for layer in layers]
        if not indices:
            raise InvalidInputError("layers must name at least one backbone stage")
        if len(set(indices)) != len(indices):
            raise InvalidInputError(f"layers {list(layers)} name a stage of {backbone} twice")
        self.layer_names = [names[i] for i in indices]
        # timm returns stages in network order whatever order they were asked in: label them so
        network_order = sorted(indices)
        self._output_names = [names[i] for i in network_order]
        if weights is None and checkpoint_path is None:
            self.model = _create_timm(backbone, out_indices=network_order)  # random init: part of the seeded stream
        else:
            # the initial values are overwritten by the weights: leave the caller's RNG stream untouched
            with torch.random.fork_rng(devices=[]):
                self.model = _create_timm(backbone, out_indices=network_order)
        info = self.model.feature_info
        found_channels = dict(zip(self._output_names, info.channels()))
        found_strides = dict(zip(self._output_names, info.reduction()))
        self.channels = {name: found_channels[name] for name in self.layer_names}
        self.strides = {name: found_strides[name] for name in self.layer_names}
        self.weights_source = load_weights(self.model, backbone, weights, checkpoint_path)
        config = getattr(self.model, "pretrained_cfg", {}) or {}
        mean, std = config.get("mean", (0.485, 0.456, 0.406)), config.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.trainable = trainable
        _truncate_after_last_output(self.model)
        if not trainable:
            self.model.eval()
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            fold_batch_norms(self.model)
        # oneDNN runs these convolutions about a quarter faster in NHWC on CPU, forward and backward
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # a frozen backbone stays in eval mode so its batch-norm statistics never drift
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        per_pass = _images_per_pass(images)
        if per_pass >= images.shape[0]:
            return self._forward(images)
        passes = [self._forward(part) for part in images.split(per_pass)]
        return {name: torch.cat([features[name] for features in passes]) for name in self.layer_names}

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.precision == "32":
            features = dict(zip(self._output_names, self.model(self.normalize(images))))
            return {name: features[name] for name in self.layer_names}
        with autocast(images.device, self.precision):
            features = dict(zip(self._output_names, self.model(self.normalize(images))))
        return {name: features[name].float() for name in self.layer_names}


def _images_per_pass(images: torch.Tensor) -> int:
    # only where it is free: the same numbers (bit for bit at 64-256 px here; elsewhere at most the
    # rounding any other batch size gives), no autograd graph to keep whole, and no traced export
    # whose graph would bake the split in
    if (images.device.type != "cpu" or torch.is_grad_enabled() or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return images.shape[0]
    return max(1, CPU_PIXELS_PER_PASS // (images.shape[-2] * images.shape[-1]))


def _stage_index(layer: str | int, names: Sequence[str], backbone: str) -> int:
    if isinstance(layer, int) and not isinstance(layer, bool):
        if not 0 <= layer < len(names):
            raise InvalidInputError(f"layer index {layer} is out of range for {backbone}: 0..{len(names) - 1} ({list(names)})")
        return layer
    if layer in names:
        return list(names).index(layer)
    raise InvalidInputError(f"backbone {backbone!r} has no layer {layer!r}; its stages are {tuple(names)} "
                            f"(or indices 0..{len(names) - 1})")


def create_backbone(backbone: str = DEFAULT_BACKBONE, layers: Sequence[str | int] = ("blocks.2", "blocks.4"),
                    **kwargs: Any) -> FeatureExtractor:
    """Shorthand for :class:`FeatureExtractor`."""
    return FeatureExtractor(backbone, layers, **kwargs)


@functools.lru_cache(maxsize=8)
def _cached_extractor(backbone: str, layers: tuple[str | int, ...], weights: str | None,
                      checkpoint_path: str | None) -> FeatureExtractor:
    # a fixed seed: a random-init frozen extractor is then the same whichever detector built it first
    with seeded(0):
        return FeatureExtractor(backbone, list(layers), weights=weights, checkpoint_path=checkpoint_path)


def shared_extractor(backbone: str, layers: Sequence[str | int], *, weights: str | None = "pretrained",
                     checkpoint_path: str | Path | None = None, device: str | torch.device = "cpu",
                     precision: str = "32") -> FeatureExtractor:
    """The process-wide frozen extractor for these settings (built once, then shared).

    Frozen and in eval mode, it holds no per-detector state, so detectors, their reloads and their
    test-time copies reuse one instance instead of each building a timm model and loading weights
    (seconds). Building it never changes the caller's random stream. ``device`` is where it runs
    (a resolved device: see :func:`adcore.devices.resolve_device`), ``precision`` how (see
    :class:`FeatureExtractor`); every device and precision gets its own copy of the CPU float32 one.
    """
    checkpoint = None if checkpoint_path is None else str(checkpoint_path)
    device = torch.device(device)
    if device.type == "cpu" and check_precision(precision) == "32":
        return _cached_extractor(backbone, tuple(layers), weights, checkpoint)
    return _placed_extractor(backbone, tuple(layers), weights, checkpoint, device, precision)


@functools.lru_cache(maxsize=8)
def _placed_extractor(backbone: str, layers: tuple[str | int, ...], weights: str | None, checkpoint_path: str | None,
                      device: torch.device, precision: str) -> FeatureExtractor:
    import copy

    base = _cached_extractor(backbone, layers, weights, checkpoint_path)
    placed = copy.deepcopy(base).to(device)
    placed.precision = precision
    return placed


def _truncate_after_last_output(model: nn.Module) -> None:
    """Drop the blocks after the deepest returned stage, which timm's EfficientNet wrapper still runs.

    timm's ``EfficientNetFeatures`` iterates ``self.blocks`` and collects after block ``i`` when
    ``i + 1`` is an output stage, so cutting the Sequential after the last output block changes no
    output (for Lite0 with ``blocks.4`` last: ``blocks.5``/``blocks.6`` are skipped). ResNet-style
    wrappers (``FeatureListNet``) already stop after their last output.
    """
    stage_of_output = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if isinstance(stage_of_output, dict) and isinstance(blocks, nn.Sequential) and stage_of_output \
            and getattr(model, "feature_hooks", None) is None:
        last = max(stage_of_output)
        if 0 < last < len(blocks):
            model.blocks = nn.Sequential(*list(blocks)[:last])


#: block types whose forward applies these (conv, batch norm) pairs back to back (checked by class name)
_FOLDABLE_OWNERS = {"EfficientNetFeatures": {("conv_stem", "bn1")},
                    "DepthwiseSeparableConv": {("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")},
                    "InvertedResidual": {("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"),
                                         ("conv_pwl", "bn3")},
                    "EdgeResidual": {("conv_exp", "bn1"), ("conv_pwl", "bn2")},
                    "ConvBnAct": {("conv", "bn1")},
                    "FeatureListNet": {("conv1", "bn1")},
                    "FeatureDictNet": {("conv1", "bn1")},
                    "BasicBlock": {("conv1", "bn1"), ("conv2", "bn2")},
                    "Bottleneck": {("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")}}


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> int:
    """Fold eval-mode batch norms of timm's EfficientNet/MobileNet/ResNet blocks into their convolutions.

    ``bn(conv(x)) = conv'(x)`` with ``w' = w·γ/√(σ²+ε)`` and ``b' = β + (b − μ)·γ/√(σ²+ε)``; the batch
    norm is replaced by what it applies after normalising (timm's ``BatchNormAct2d``: dropout and
    activation). Only block types whose forward is known to apply the pair back to back are
    touched (plus a ``Sequential`` of exactly conv → batch norm, ResNet's downsample), so other
    architectures run unchanged. Returns the number of folded pairs.
    """
    folded = 0
    for owner in list(model.modules()):
        pairs = set(_FOLDABLE_OWNERS.get(type(owner).__name__, set()))
        if type(owner) is nn.Sequential and len(owner) == 2:
            pairs.add(("0", "1"))
        for conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None \
                    or bn.training:
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)
            after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(owner, bn_name, nn.Sequential(*after) if after else nn.Identity())
            folded += 1
    return folded
