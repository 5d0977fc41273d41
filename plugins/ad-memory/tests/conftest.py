"""Fixtures shared by the ad-memory tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lite0_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline provider's EfficientNet-Lite0 weights written as a safetensors state dict.

    A detector given this file as ``checkpoint_path=`` has exactly the provider's weights, so it must
    predict what the default ``weights="pretrained"`` detector predicts.
    """
    from safetensors.torch import save_file

    from adcore.backbones import FeatureExtractor, stages

    every_stage = [stage.index for stage in stages("tf_efficientnet_lite0")]
    # trainable: no batch norm folded into the convolutions, so the state dict has timm's own tensors
    network = FeatureExtractor("tf_efficientnet_lite0", every_stage, weights="pretrained", trainable=True).model
    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in network.state_dict().items()}, str(path))
    return path
