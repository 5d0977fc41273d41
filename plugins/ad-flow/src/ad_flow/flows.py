"""Normalizing-flow machinery shared by FastFlow and DifferNet (the only FrEIA user in adcore).

Both detectors map features ``y`` through an invertible network ``z = f(y)`` trained so that
``z`` follows a standard normal; the training loss is the negative log-likelihood
``½‖z‖² − log|det ∂f/∂y|`` (change of variables, constants dropped). This module builds the two
FrEIA graphs they need and computes that loss once:

* :func:`build_conv_flow` — FastFlow's 2D flow: FrEIA ``AllInOneBlock`` coupling steps (affine
  coupling + learned global affine + fixed random channel permutation, as anomalib uses) whose
  subnets alternate 3×3 and 1×1 convolutions, so the flow mixes local context and channels.
* :func:`build_fc_flow` — DifferNet's flow on one feature vector: ``GLOWCouplingBlock`` (two affine
  couplings per block, soft-clamped with ``atan`` as in the DifferNet paper's eq. 2) followed by a
  fixed random permutation, with fully connected subnets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from torch import nn

__all__ = ["conv_subnet", "fc_subnet", "build_conv_flow", "build_fc_flow", "flow_nll", "trainable_parameters"]

SubnetConstructor = Callable[[int, int], nn.Module]


def conv_subnet(kernel_size: int, hidden_ratio: float) -> SubnetConstructor:
    """A FrEIA subnet constructor: conv(k) → ReLU → conv(k), 'same' padding, hidden = ratio × input channels."""

    def construct(in_channels: int, out_channels: int) -> nn.Module:
        hidden = max(1, int(in_channels * hidden_ratio))
        padding = kernel_size // 2
        return nn.Sequential(nn.Conv2d(in_channels, hidden, kernel_size, padding=padding), nn.ReLU(),
                             nn.Conv2d(hidden, out_channels, kernel_size, padding=padding))

    return construct


def fc_subnet(hidden: int, layers: int, dropout: float = 0.0) -> SubnetConstructor:
    """A FrEIA subnet constructor: ``layers`` hidden fully connected ReLU layers of width ``hidden``."""

    def construct(in_features: int, out_features: int) -> nn.Module:
        modules: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                modules.append(nn.Dropout(dropout))
            width = hidden
        modules.append(nn.Linear(width, out_features))
        return nn.Sequential(*modules)

    return construct


def build_conv_flow(shape: Sequence[int], steps: int, *, hidden_ratio: float = 1.0, clamp: float = 2.0,
                    conv3x3_only: bool = False) -> Ff.SequenceINN:
    """FastFlow's 2D flow on ``(C, H, W)`` features: ``steps`` AllInOneBlocks, kernels 3,1,3,1,…

    The fixed channel permutation of each block is drawn from NumPy's global RNG, so callers build
    it under :func:`adcore.seeding.seeded`; it is stored in the state dict, so a loaded model has
    the permutation it was trained with.
    """
    flow = Ff.SequenceINN(*shape)
    for step in range(steps):
        kernel = 1 if (step % 2 == 1 and not conv3x3_only) else 3
        flow.append(Fm.AllInOneBlock, subnet_constructor=conv_subnet(kernel, hidden_ratio),
                    affine_clamping=clamp, permute_soft=False)
    return flow


def build_fc_flow(features: int, blocks: int, *, hidden: int, layers: int = 2, clamp: float = 3.0,
                  dropout: float = 0.0, seed: int = 0) -> Ff.SequenceINN:
    """DifferNet's flow on ``features``-dimensional vectors: ``blocks`` × (GLOW coupling, random permutation)."""
    flow = Ff.SequenceINN(features)
    for block in range(blocks):
        flow.append(Fm.GLOWCouplingBlock, subnet_constructor=fc_subnet(hidden, layers, dropout), clamp=clamp,
                    clamp_activation="ATAN")
        flow.append(Fm.PermuteRandom, seed=seed + block)
    return flow


def flow_nll(z: torch.Tensor, log_jac_det: torch.Tensor) -> torch.Tensor:
    """Per-sample negative log-likelihood ``½‖z‖² − log|det J|`` (constants dropped), shape ``(B,)``."""
    return 0.5 * z.flatten(1).pow(2).sum(1) - log_jac_det


def trainable_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters that take gradients (FrEIA keeps its permutations as frozen parameters)."""
    return [p for module in modules for p in module.parameters() if p.requires_grad]
