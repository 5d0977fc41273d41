"""FastFlow: 2D normalizing flows on frozen pretrained feature maps.

Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D Normalizing Flows",
arXiv 2111.07677, 2021. A frozen pretrained CNN gives feature maps at several strides; each level is
layer-normalised over ``[C, H, W]`` and mapped by its own 2D flow (coupling steps whose subnets
alternate 3×3 and 1×1 convolutions) to a standard normal, trained by negative log-likelihood with
Adam (lr 1e-3, weight decay 1e-5, batch 32). At test time each level's per-position likelihood
``exp(−½ mean_c z²)`` is negated, upsampled to the input size and averaged over levels (as the
reference implementation in anomalib does); the image score is the map's maximum.

Deliberate deviations from the paper:

* Backbone: any timm CNN through adcore's shared extractor; ``layers=None`` takes the first stage
  at strides 4/8/16, the paper's ResNet18 / WideResNet50 stages 1–3; the default backbone is the
  offline EfficientNet-Lite0 (stages ``blocks.1/2/4``) instead of those ResNets or CaiT/DeiT
  (transformer backbones are not offered).
* Coupling blocks are FrEIA's ``AllInOneBlock`` (affine coupling + global affine + fixed channel
  permutation) as in anomalib, not the paper's exact Glow step; hidden channels = ratio × input.
* Backbone features are computed once per training image and reused every epoch: the backbone is
  frozen and FastFlow uses no augmentation, so this equals recomputing them, only faster.
* Default ``epochs=100`` (the paper trains 500 epochs on a GPU); the measured budget is in
  ``docs/ad-flow.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from ad_flow.flows import build_conv_flow, flow_nll, trainable_parameters
from adcore.backbones import DEFAULT_BACKBONE
from adcore.feature_detector import FeatureDetector
from adcore.inputs import ImageStream
from adcore.ops import upsample
from adcore.params import Boolean, Integer, Real
from adcore.training import canonical_permutation, content_keys, train_epochs

__all__ = ["FastFlow"]


class FastFlow(FeatureDetector):
    """FastFlow detector (see the module docstring for the method and its deviations).

    Args:
        backbone: timm CNN name (any; the offline default is EfficientNet-Lite0).
        layers: backbone stages, one flow per stage; ``None`` (default) is the first stage at each
            of strides 4/8/16 (ResNet ``layer1``–``layer3``, the paper's; Lite0 ``blocks.1/2/4``).
        flow_steps: coupling steps per flow (8 in the paper for ResNet18/WRN50).
        hidden_ratio: subnet hidden channels as a multiple of its input channels.
        conv3x3_only: use 3×3 kernels in every step instead of alternating 3×3 / 1×1.
        clamp: soft clamping of the affine scales in each coupling step.
        epochs, batch_size, learning_rate, weight_decay: Adam training of the flows by NLL.
        weights: ``"pretrained"`` (offline provider), ``"hub"`` (download) or ``None`` (random
            initialisation, only for tests); checkpoint_path: a local backbone state dict, overriding
            ``weights`` (see :class:`adcore.backbones.FeatureExtractor`).
        input_size: side (or ``(h, w)``) images are resized to.
        seed: seeds the permutations, the initial weights and the batch order.
    """

    default_strides = (4, 8, 16)
    stage_pick = "first"
    parameter_constraints = {
        "flow_steps": [Integer(1, 64)],
        "hidden_ratio": [Real(0.0, 16.0, closed="right")],
        "conv3x3_only": [Boolean()],
        "clamp": [Real(0.0, 100.0, closed="right")],
        "epochs": [Integer(1, 100_000)],
        "learning_rate": [Real(0.0, 10.0, closed="right")],
        "weight_decay": [Real(0.0, 1.0)],
    }
    parameter_aliases = {"lr": "learning_rate"}

    def __init__(self, *, backbone: str = DEFAULT_BACKBONE, layers: Sequence[str | int] | None = None,
                 flow_steps: int = 8, hidden_ratio: float = 1.0, conv3x3_only: bool = False, clamp: float = 2.0,
                 epochs: int = 100, batch_size: int = 32, learning_rate: float = 1e-3, weight_decay: float = 1e-5,
                 weights: str | None = "pretrained", checkpoint_path: str | None = None,
                 input_size: int = 256, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.flow_steps = flow_steps
        self.hidden_ratio = hidden_ratio
        self.conv3x3_only = conv3x3_only
        self.clamp = clamp
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.input_size = input_size
        self.seed = seed

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, stream: ImageStream) -> None:
        started = time.perf_counter()
        cached: list[list[torch.Tensor]] = []
        keys: list[bytes] = []
        with torch.no_grad():
            for batch in stream:
                keys.extend(content_keys(batch))
                for level, feature in enumerate(self.extractor(batch).values()):
                    if level == len(cached):
                        cached.append([])
                    cached[level].append(feature)
        # the cached features in the canonical order of their images: the stream's order does not matter
        order = canonical_permutation(keys)
        levels = [torch.cat(chunks)[order] for chunks in cached]
        self.feature_shapes_ = [list(level.shape[1:]) for level in levels]
        features_seconds = time.perf_counter() - started

        self._build_modules()
        head = self.head_

        def loss_fn(indices: torch.Tensor) -> torch.Tensor:
            outputs = head([level[indices] for level in levels])
            return sum(flow_nll(z, log_jac).mean() for z, log_jac in outputs)

        optimizer = torch.optim.Adam(trainable_parameters(head), lr=self.learning_rate, weight_decay=self.weight_decay)
        started = time.perf_counter()
        history = train_epochs(loss_fn, torch.arange(levels[0].shape[0]), optimizer, epochs=self.epochs,
                               batch_size=self.batch_size, seed=self.seed, modules=[head], desc="fastflow",
                               device=self.device_, precision=self.precision)
        self.history_ = history.as_dict()
        self.timing_ = {"features_s": features_seconds, "train_s": time.perf_counter() - started}

    # -- predict --------------------------------------------------------------------------------
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.head_(list(self.extractor(images).values()))
        size = tuple(images.shape[-2:])
        maps = []
        for z, _ in outputs:
            # per-position likelihood of the level (channels averaged), negated: higher = more anomalous
            likelihood = torch.exp(-0.5 * z.pow(2).mean(1))
            maps.append(upsample(-likelihood, size))
        anomaly_map = torch.stack(maps).mean(0)
        return anomaly_map.flatten(1).amax(1), anomaly_map

    # -- helpers --------------------------------------------------------------------------------
    def _build_modules(self) -> None:
        self.head_ = _FastFlowHead([tuple(int(v) for v in shape) for shape in self.feature_shapes_], self.flow_steps,
                                   hidden_ratio=self.hidden_ratio, clamp=self.clamp,
                                   conv3x3_only=self.conv3x3_only).to(self.device_)  # drawn on the CPU, then moved


class _FastFlowHead(nn.Module):
    """Per level: LayerNorm over ``[C, H, W]`` (affine, trained with the flow), then the 2D flow."""

    def __init__(self, shapes: Sequence[tuple[int, int, int]], steps: int, *, hidden_ratio: float, clamp: float,
                 conv3x3_only: bool) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(list(shape)) for shape in shapes)
        self.flows = nn.ModuleList(build_conv_flow(shape, steps, hidden_ratio=hidden_ratio, clamp=clamp,
                                                   conv3x3_only=conv3x3_only) for shape in shapes)

    def forward(self, features: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [flow(norm(feature)) for feature, norm, flow in zip(features, self.norms, self.flows, strict=True)]

